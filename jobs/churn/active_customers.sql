-- Shared by every source of this job: the subscribers who had signed up, and not cancelled, before
-- the start of as_of (the labels SQL reads it with as_of = its cutoff). Each source reads it as the
-- CTE `active_customers`, listed under sources.shared in job.yaml.
select customers.*
from demo.customers as customers
where customers.signup_at < %(as_of)s::timestamptz
    and not exists (
        select
        from demo.cancellations as cancellations
        where cancellations.customer_id = customers.customer_id
            and cancellations.canceled_at < %(as_of)s::timestamptz
    )
