-- Reasons are stored compactly: reason_codes smallint[][] holds, for each of a row's top reasons,
-- [position of the feature in the job's feature list (1-based), contribution in thousandths of
-- log-odds]; the predictions.<job> view builds the documented jsonb from them with plain SQL. Parsing
-- jsonb on COPY cost the server more than scoring itself. Days written before keep their jsonb in
-- `reasons`, which the view shows as it is. Every prediction table that has `reasons` (history and
-- shadow parents, and run tables not attached yet) gets the new column; partitions inherit it.
-- Written to be safe to apply again.
do $$
declare
    target record;
begin
    for target in
        select n.nspname as schema_name, c.relname as table_name
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attname = 'reasons' and not a.attisdropped
        where n.nspname in ('predictions', 'mlpipe_data')
          and c.relkind in ('r', 'p')
          and not c.relispartition
    loop
        execute format(
            'alter table %I.%I add column if not exists reason_codes smallint[]',
            target.schema_name, target.table_name
        );
    end loop;
end
$$;
