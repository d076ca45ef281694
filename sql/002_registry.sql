-- Model registry: one row per trained version, aliases (champion, challenger) and their history.
create table mlpipe.models (
    model_id bigserial primary key,
    job text not null,
    version integer not null,
    model_version text not null unique,
    algorithm text not null,
    created_at timestamptz not null default now(),
    trained_as_of date not null,
    artifact_uri text not null,
    artifact_sha256 text not null check (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    metrics jsonb not null,
    params jsonb not null,
    feature_schema jsonb not null,
    training_window jsonb not null,
    row_counts jsonb not null,
    reference jsonb not null,
    library_versions jsonb not null,
    code_version text not null,
    promotion jsonb,
    unique (job, version)
);

create table mlpipe.model_aliases (
    job text not null,
    alias text not null check (alias in ('champion', 'challenger')),
    model_id bigint not null references mlpipe.models,
    updated_at timestamptz not null default now(),
    primary key (job, alias)
);

create table mlpipe.alias_history (
    change_id bigserial primary key,
    job text not null,
    alias text not null,
    model_id bigint references mlpipe.models,
    previous_model_id bigint references mlpipe.models,
    changed_at timestamptz not null default now(),
    changed_by text not null default current_user,
    reason text not null
);
create index alias_history_job_idx on mlpipe.alias_history (job, changed_at desc);
