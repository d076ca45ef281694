-- The digest of the job spec a scoring run planned with (mlpipe.chunks.spec_digest): a chunk that
-- finds the spec changed refuses, so one run never scores with two specs.
alter table mlpipe.runs add column spec_digest text check (spec_digest ~ '^[0-9a-f]{64}$');
-- Never written: the reason says everything (a row without a key says so in its reason).
alter table mlpipe.quarantine drop column detail;
