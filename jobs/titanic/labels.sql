select
    titanic.passenger,
    titanic.is_survivor::int as label
from demo.titanic as titanic
