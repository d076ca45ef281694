-- Schemas: mlpipe holds the pipeline's own state, predictions what readers see,
-- mlpipe_data the tables behind them (run tables that become history partitions).
create schema if not exists mlpipe;
create schema if not exists predictions;
create schema if not exists mlpipe_data;

comment on schema predictions is 'Published predictions: <job> (latest day, one row per entity) and <job>_history.';
comment on schema mlpipe is 'mlpipe pipeline state: models, aliases, runs, chunks, quarantine.';
comment on schema mlpipe_data is 'mlpipe run tables; read them through predictions.*';
