-- Every passenger on the list (a snapshot: as_of is not used).
select titanic.passenger
from demo.titanic as titanic
