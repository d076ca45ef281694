-- 1 when a subscriber active at the cutoff cancels within horizon_days after it, else 0.
-- (active_customers is shared with the other sources; here its as_of is the cutoff.)
with final as (
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
    from active_customers as active
)

select * from final
