-- Model lifecycle: calibration kept with each version, challenger runs (shadow, batch A/B),
-- shadow partitions beside published ones, and where each job's view points.
alter table mlpipe.models add column calibration jsonb;
alter table mlpipe.models add column behaviour jsonb;

alter table mlpipe.runs add column challenger_model_id bigint references mlpipe.models;
alter table mlpipe.runs add column challenger_mode text
    check (challenger_mode in ('shadow', 'ab', 'shadow+ab'));

alter table mlpipe.partitions add column kind text not null default 'published'
    check (kind in ('published', 'shadow'));
alter table mlpipe.partitions drop constraint partitions_pkey;
alter table mlpipe.partitions add primary key (job, kind, as_of);

-- The day predictions.<job> shows: the newest published day, unless a rollback pointed it back.
create table mlpipe.live_views (
    job text primary key,
    as_of date not null,
    run_id bigint not null references mlpipe.runs,
    changed_at timestamptz not null default now(),
    reason text not null
);
