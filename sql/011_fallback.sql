-- Intraday top-up: a run of its own kind that scores the entities the live day lacks and inserts them
-- into that day's partition; it records the moment its population and features were read as of
-- (the day it stores its rows under stays in as_of). Written to be safe to apply again.
alter table mlpipe.runs add column if not exists source_as_of timestamptz;
alter table mlpipe.runs drop constraint if exists runs_kind_check;
alter table mlpipe.runs add constraint runs_kind_check check (kind in ('score', 'train', 'monitor', 'topup'));
comment on column mlpipe.runs.source_as_of is
    'A top-up: the moment its population and features were read as of (its rows are stored under as_of).';
