-- The Prefect flow run that carried each run (its UI page: `mlpipe runs show N` links to it).
-- Written to be safe to apply again.
alter table mlpipe.runs add column if not exists flow_run_id uuid;
