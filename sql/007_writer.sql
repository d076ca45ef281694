-- The pipeline runs as a login role in mlpipe_writer, not as the administrator who migrates.
-- ATTACH/DETACH PARTITION, CREATE OR REPLACE VIEW, ANALYZE and DROP need the object's owner, so
-- every table and view in predictions and mlpipe_data belongs to mlpipe_writer (the pipeline hands
-- each object it creates over too, whoever it runs as): any member, or an administrator, may run the
-- next day. Objects made by an administrator before this migration are handed over here.
do $$
declare
    obj record;
begin
    for obj in
        select n.nspname, c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname in ('predictions', 'mlpipe_data') and c.relkind in ('r', 'p', 'v')
    loop
        execute format('alter %s %I.%I owner to mlpipe_writer',
                       case obj.relkind when 'v' then 'view' else 'table' end, obj.nspname, obj.relname);
    end loop;
end
$$;

-- Grants again, in case an administrator other than the one who ran 004 applied later migrations
-- (default privileges only cover objects their own role creates).
grant select, insert, update, delete on all tables in schema mlpipe to mlpipe_writer;
grant usage on all sequences in schema mlpipe to mlpipe_writer;
grant select on all tables in schema mlpipe to mlpipe_analyst;
-- The pipeline reads which migrations are applied; only an administrator records them.
revoke insert, update, delete on mlpipe.migrations from mlpipe_writer;
