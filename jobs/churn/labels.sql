-- 1 when a subscriber active at the cutoff cancels within horizon_days after it, else 0.
with active as (
    select customers.customer_id
    from demo.customers as customers
    where customers.signup_at < %(cutoff)s::timestamptz
        and not exists (
            select
            from demo.cancellations as cancellations
            where cancellations.customer_id = customers.customer_id
                and cancellations.canceled_at < %(cutoff)s::timestamptz
        )
),

final as (
    select
        active.customer_id,
        exists (
            select
            from demo.cancellations as cancellations
            where cancellations.customer_id = active.customer_id
                and cancellations.canceled_at >= %(cutoff)s::timestamptz
                and cancellations.canceled_at
                    < %(cutoff)s::timestamptz + make_interval(days => %(horizon_days)s)
        )::int as label
    from active
)

select * from final
