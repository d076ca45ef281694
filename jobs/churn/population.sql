-- Every subscriber who had signed up, and not cancelled, before the start of as_of.
select customers.customer_id
from demo.customers as customers
where customers.signup_at < %(as_of)s::timestamptz
    and not exists (
        select
        from demo.cancellations as cancellations
        where cancellations.customer_id = customers.customer_id
            and cancellations.canceled_at < %(as_of)s::timestamptz
    )
