select wide.entity_id
from demo.wide as wide
