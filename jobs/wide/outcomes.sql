-- demo.wide is a snapshot without event times: its label counts as observed the day after whichever
-- day was scored, so a scored day matures after the horizon (the monitor's ground truth in
-- bench/monitor.py). The monitor keeps the outcomes observed in [cutoff, cutoff + horizon).
select
    wide.entity_id,
    wide.label as outcome,
    %(cutoff)s::timestamptz + interval '1 day' as observed_at
from demo.wide as wide
