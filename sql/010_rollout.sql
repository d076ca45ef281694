-- Progressive rollout of a challenger: one row per rollout (its state lives here, not in a process),
-- the share each scoring run gave the challenger (so a step's days are the days scored at it), and
-- the share each alias change set (the steps of a rollout in the alias history).
create table if not exists mlpipe.rollouts (
    rollout_id bigserial primary key,
    job text not null,
    model_id bigint not null references mlpipe.models,            -- the challenger rolled out
    champion_model_id bigint not null references mlpipe.models,   -- the champion when it started
    steps double precision[] not null,
    step_index integer not null default 0,
    status text not null check (status in ('running', 'paused', 'promoted', 'rolled_back', 'aborted')),
    started_at timestamptz not null default now(),
    started_by text not null,
    reason text not null,
    step_changed_at timestamptz not null default now(),
    ended_at timestamptz,
    checked_as_of date,             -- the monitor day of the last check
    last_check jsonb,               -- its verdict and the figures that decided it
    check (step_index >= 0 and step_index < cardinality(steps))
);
-- One rollout at a time per job, even when two operators start one at the same moment.
create unique index if not exists rollouts_one_active_idx on mlpipe.rollouts (job)
    where status in ('running', 'paused');

alter table mlpipe.runs add column if not exists challenger_share double precision;
alter table mlpipe.runs add column if not exists rollout_id bigint references mlpipe.rollouts;
alter table mlpipe.runs add column if not exists rollout_step integer;

alter table mlpipe.alias_history add column if not exists share double precision;

grant select, insert, update, delete on mlpipe.rollouts to mlpipe_writer;
grant usage on all sequences in schema mlpipe to mlpipe_writer;
grant select on mlpipe.rollouts to mlpipe_analyst;
