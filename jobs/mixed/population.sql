select mixed.entity_id
from demo.mixed as mixed
