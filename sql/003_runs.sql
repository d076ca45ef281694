-- Runs (training and scoring), their chunks, quarantined rows, and which run is published for each day.
create table mlpipe.runs (
    run_id bigserial primary key,
    job text not null,
    kind text not null check (kind in ('score', 'train')),
    as_of date not null,
    model_id bigint references mlpipe.models,
    status text not null check (status in ('running', 'published', 'succeeded', 'failed', 'abandoned')),
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    population bigint,
    rows_scored bigint,
    rows_quarantined bigint,
    chunks integer,
    timings jsonb,
    gates jsonb,
    score_histogram jsonb,
    error text,
    host text,
    pid integer
);
create index runs_job_day_idx on mlpipe.runs (job, as_of, started_at desc);

create table mlpipe.run_chunks (
    run_id bigint not null references mlpipe.runs on delete cascade,
    chunk_no integer not null,
    key_lo text,
    key_hi text,
    rows_in bigint not null,
    rows_scored bigint not null,
    rows_quarantined bigint not null,
    seconds real not null,
    finished_at timestamptz not null default now(),
    primary key (run_id, chunk_no)
);

create table mlpipe.quarantine (
    run_id bigint not null references mlpipe.runs on delete cascade,
    entity_id text,
    reason text not null,
    detail text,
    created_at timestamptz not null default now()
);
create index quarantine_run_idx on mlpipe.quarantine (run_id);

-- The history partition that holds each published (job, day); the newest one backs predictions.<job>.
create table mlpipe.partitions (
    job text not null,
    as_of date not null,
    run_id bigint not null references mlpipe.runs,
    table_name text not null,
    published_at timestamptz not null default now(),
    primary key (job, as_of)
);
