select
    mixed.entity_id,
    mixed.label
from demo.mixed as mixed
