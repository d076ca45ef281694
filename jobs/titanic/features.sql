select
    titanic.passenger,
    titanic.sex,
    titanic.age_years,
    titanic.passenger_class
from demo.titanic as titanic
