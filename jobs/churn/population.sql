-- Every subscriber who had signed up, and not cancelled, before the start of as_of.
select active_customers.customer_id
from active_customers
