-- Group roles (no login): grant them to login users.
--   mlpipe_reader: frontends; SELECT on predictions only.
--   mlpipe_analyst: reader plus read access to the pipeline's state in mlpipe.
--   mlpipe_writer: the pipeline itself.
do $$
begin
    if not exists (select from pg_roles where rolname = 'mlpipe_reader') then
        create role mlpipe_reader nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'mlpipe_analyst') then
        create role mlpipe_analyst nologin in role mlpipe_reader;
    end if;
    if not exists (select from pg_roles where rolname = 'mlpipe_writer') then
        create role mlpipe_writer nologin;
    end if;
end
$$;

revoke all on schema mlpipe, mlpipe_data from public;
grant usage on schema predictions to mlpipe_reader;
grant select on all tables in schema predictions to mlpipe_reader;
alter default privileges in schema predictions grant select on tables to mlpipe_reader;

grant usage on schema mlpipe to mlpipe_analyst;
grant select on all tables in schema mlpipe to mlpipe_analyst;
alter default privileges in schema mlpipe grant select on tables to mlpipe_analyst;

grant usage, create on schema mlpipe, predictions, mlpipe_data to mlpipe_writer;
grant select, insert, update, delete on all tables in schema mlpipe to mlpipe_writer;
grant usage on all sequences in schema mlpipe to mlpipe_writer;
alter default privileges in schema mlpipe grant select, insert, update, delete on tables to mlpipe_writer;
alter default privileges in schema mlpipe grant usage on sequences to mlpipe_writer;
