-- Raw features of every active subscriber, using only rows stamped before as_of (point in time).
-- The engine adds a key-range filter per chunk; the lateral joins keep each chunk's work local
-- to its own customers through the (customer_id, *_at) indexes.
with population as (
    select
        active_customers.customer_id,
        active_customers.signup_at,
        active_customers.plan,
        active_customers.is_marketing_opt_in
    from active_customers
),

final as (
    select
        population.customer_id,
        extract(epoch from %(as_of)s::timestamptz - population.signup_at) / 86400 as tenure_days,
        population.plan,
        population.is_marketing_opt_in,
        recent.sessions_30d,
        recent.sessions_prev_30d,
        extract(epoch from %(as_of)s::timestamptz - last_session.last_session_at) / 86400
            as days_since_last_session,
        recent.support_tickets_30d,
        billing.payments_90d,
        billing.payments_failed_90d
    from population
    left join lateral (
        select
            count(*) filter (
                where events.kind = 'session'
                    and events.event_at >= %(as_of)s::timestamptz - interval '30 days'
            ) as sessions_30d,
            count(*) filter (
                where events.kind = 'session'
                    and events.event_at < %(as_of)s::timestamptz - interval '30 days'
            ) as sessions_prev_30d,
            count(*) filter (
                where events.kind = 'support'
                    and events.event_at >= %(as_of)s::timestamptz - interval '30 days'
            ) as support_tickets_30d
        from demo.events as events
        where events.customer_id = population.customer_id
            and events.event_at >= %(as_of)s::timestamptz - interval '60 days'
            and events.event_at < %(as_of)s::timestamptz
    ) as recent on true
    left join lateral (
        select max(events.event_at) as last_session_at
        from demo.events as events
        where events.customer_id = population.customer_id
            and events.kind = 'session'
            and events.event_at < %(as_of)s::timestamptz
    ) as last_session on true
    left join lateral (
        select
            count(*) as payments_90d,
            count(*) filter (where payments.status = 'failed') as payments_failed_90d
        from demo.payments as payments
        where payments.customer_id = population.customer_id
            and payments.charged_at >= %(as_of)s::timestamptz - interval '90 days'
            and payments.charged_at < %(as_of)s::timestamptz
    ) as billing on true
)

select * from final
