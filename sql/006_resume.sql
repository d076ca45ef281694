-- Resume: a run keeps its chunk plan, and each finished chunk its score summary (histogram, range),
-- so that a run that crashed can be continued by the next one with only the missing chunks.
alter table mlpipe.runs add column plan jsonb;
alter table mlpipe.run_chunks add column summary jsonb;
-- Which process wrote each chunk (host:pid): threads, or a Dask worker elsewhere.
alter table mlpipe.run_chunks add column worker text;
