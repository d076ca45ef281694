select
    wide.entity_id,
    wide.label
from demo.wide as wide
