-- Publish without a lock readers wait for: predictions.<job> reads mlpipe_data.<job>_live, an
-- inheritance parent whose child is the live day's table, filtered by the table this pointer names.
-- Day tables inherit from <job>_history too (a declarative partition cannot have a second parent), so
-- existing declaratively partitioned history and shadow tables become inheritance parents here; the
-- next publish of each job moves its view onto <job>_live. Written to be safe to apply again.
alter table mlpipe.live_views add column if not exists live_table regclass;
comment on column mlpipe.live_views.live_table is
    'The table predictions.<job> shows (a child of mlpipe_data.<job>_live); the view filters on it.';

do $$
declare
    parent record;
    child record;
    old_name text;
begin
    for parent in
        select c.oid, c.relname, pg_get_userbyid(c.relowner) as owner from pg_partitioned_table p
        join pg_class c on c.oid = p.partrelid join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'predictions'
    loop
        old_name := parent.relname || '_partitioned';
        execute format('alter table predictions.%I rename to %I', parent.relname, old_name);
        execute format(
            'create table predictions.%I (like predictions.%I including defaults, '
            'constraint rows_live_in_day_tables check (false) no inherit)', parent.relname, old_name
        );
        execute format('alter table predictions.%I owner to %I', parent.relname, parent.owner);
        for child in select i.inhrelid::regclass as name from pg_inherits i where i.inhparent = parent.oid loop
            execute format('alter table predictions.%I detach partition %s', old_name, child.name);
            execute format('alter table %s inherit predictions.%I', child.name, parent.relname);
        end loop;
        execute format('drop table predictions.%I', old_name);
    end loop;
end
$$;
