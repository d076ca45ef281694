-- Monitoring: what each scoring run counted into its model's reference bins, and the monitor's
-- findings per day (realized and estimated performance per model version and arm; drift per input).
-- Written to be safe to apply again.
alter table mlpipe.runs add column if not exists input_histograms jsonb;  -- {input or 'score': [counts]}
alter table mlpipe.runs drop constraint if exists runs_kind_check;
alter table mlpipe.runs add constraint runs_kind_check check (kind in ('score', 'train', 'monitor'));

create table if not exists mlpipe.performance (
    job text not null,
    as_of date not null,
    model_version text not null,
    arm text not null check (arm in ('champion', 'challenger', 'shadow')),
    run_id bigint not null references mlpipe.runs,
    n bigint not null,
    matured boolean not null,
    positives bigint,
    roc_auc double precision,
    roc_auc_lo double precision,
    roc_auc_hi double precision,
    pr_auc double precision,
    log_loss double precision,
    brier double precision,
    calibration jsonb,
    mean_score double precision,
    estimated_roc_auc double precision,
    estimated_positive_rate double precision,
    unavailable text,
    computed_at timestamptz not null default now(),
    primary key (job, as_of, model_version, arm)
);

create table if not exists mlpipe.drift (
    job text not null,
    as_of date not null,
    run_id bigint not null references mlpipe.runs,
    feature text not null,
    psi_reference double precision,
    js_reference double precision,
    psi_previous double precision,
    js_previous double precision,
    missing_share double precision,
    unknown_share double precision,
    reference text not null check (reference in ('training', 'previous day')),
    level text not null check (level in ('ok', 'warn', 'fail')),
    computed_at timestamptz not null default now(),
    primary key (job, as_of, feature)
);
