-- Raw features of every active subscriber, using only rows stamped before as_of (point in time).
-- Set-based: each source is aggregated by customer_id, and the pieces are stacked and grouped by
-- customer_id once more. The engine's key-range filter on customer_id therefore reaches every base
-- table (PostgreSQL pushes a filter on the grouping key below GROUP BY and into each UNION ALL arm):
-- a chunk reads its own customers' rows by range, through the (customer_id, *_at) indexes, instead
-- of one lookup per customer. A join of the pieces would not carry the range filter over.
with bounds as (
    -- The windows' bounds, computed once: a date cast to timestamptz is not a constant to the
    -- planner, so written inline it would be computed again for every row it is compared with.
    select
        %(as_of)s::timestamptz as as_of_at,
        %(as_of)s::timestamptz - interval '30 days' as since_30d_at,
        %(as_of)s::timestamptz - interval '60 days' as since_60d_at,
        %(as_of)s::timestamptz - interval '90 days' as since_90d_at
),

population as (
    select
        active_customers.customer_id,
        active_customers.signup_at,
        active_customers.plan,
        active_customers.is_marketing_opt_in
    from active_customers
),

activity as (
    select
        events.customer_id,
        count(*) filter (
            where events.kind = 'session'
                and events.event_at >= (select bounds.since_30d_at from bounds)
        ) as sessions_30d,
        count(*) filter (
            where events.kind = 'session'
                and events.event_at < (select bounds.since_30d_at from bounds)
        ) as sessions_prev_30d,
        count(*) filter (
            where events.kind = 'support'
                and events.event_at >= (select bounds.since_30d_at from bounds)
        ) as support_tickets_30d,
        max(events.event_at) filter (where events.kind = 'session') as last_session_at
    from demo.events as events
    where events.event_at >= (select bounds.since_60d_at from bounds)
        and events.event_at < (select bounds.as_of_at from bounds)
    group by events.customer_id
),

billing as (
    select
        payments.customer_id,
        count(*) as payments_90d,
        count(*) filter (where payments.status = 'failed') as payments_failed_90d
    from demo.payments as payments
    where payments.charged_at >= (select bounds.since_90d_at from bounds)
        and payments.charged_at < (select bounds.as_of_at from bounds)
    group by payments.customer_id
),

-- One row per customer and piece; each piece fills its own columns.
pieces as (
    select
        population.customer_id,
        true as is_active,
        population.signup_at,
        population.plan,
        population.is_marketing_opt_in,
        null::bigint as sessions_30d,
        null::bigint as sessions_prev_30d,
        null::bigint as support_tickets_30d,
        null::timestamptz as last_session_at,
        null::bigint as payments_90d,
        null::bigint as payments_failed_90d
    from population
    union all
    select
        activity.customer_id,
        false,
        null,
        null,
        null,
        activity.sessions_30d,
        activity.sessions_prev_30d,
        activity.support_tickets_30d,
        activity.last_session_at,
        null,
        null
    from activity
    union all
    select
        billing.customer_id,
        false,
        null,
        null,
        null,
        null,
        null,
        null,
        null,
        billing.payments_90d,
        billing.payments_failed_90d
    from billing
),

final as (
    select
        pieces.customer_id,
        extract(epoch from %(as_of)s::timestamptz - max(pieces.signup_at)) / 86400 as tenure_days,
        max(pieces.plan) as plan,
        bool_or(pieces.is_marketing_opt_in) as is_marketing_opt_in,
        coalesce(max(pieces.sessions_30d), 0) as sessions_30d,
        coalesce(max(pieces.sessions_prev_30d), 0) as sessions_prev_30d,
        extract(epoch from %(as_of)s::timestamptz - coalesce(
            max(pieces.last_session_at),
            -- No session in the last 60 days (about one customer in ten): look further back.
            (
                select max(events.event_at)
                from demo.events as events
                where events.customer_id = pieces.customer_id
                    and events.kind = 'session'
                    and events.event_at < %(as_of)s::timestamptz
            )
        )) / 86400 as days_since_last_session,
        coalesce(max(pieces.support_tickets_30d), 0) as support_tickets_30d,
        coalesce(max(pieces.payments_90d), 0) as payments_90d,
        coalesce(max(pieces.payments_failed_90d), 0) as payments_failed_90d
    from pieces
    group by pieces.customer_id
    having bool_or(pieces.is_active)
)

select * from final
