-- demo.wide_outcomes: each entity's label, as a narrow outcomes feed keyed by entity (built with
-- demo.wide by mlpipe/demo/wide.py, observed 30 days ago by default, so the day bench/monitor.py scores
-- has matured). Keyed and narrow, the monitor merges it with the day in key order through its primary
-- key; without an index on the key the join would sort every outcome first.
select
    outcomes.entity_id,
    outcomes.outcome,
    outcomes.observed_at
from demo.wide_outcomes as outcomes
