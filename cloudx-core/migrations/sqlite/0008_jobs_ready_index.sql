-- Claims take queued jobs in (priority DESC, run_at, id) order: the index gives that order
-- whole, so a claim reads the first rows instead of sorting every queued job.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, id) WHERE status = 'queued';
