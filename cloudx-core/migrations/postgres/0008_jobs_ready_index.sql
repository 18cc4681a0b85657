-- Claims take queued jobs in (priority DESC, run_at, id) order: the index gives that order
-- whole, so a claim reads the first rows instead of sorting every queued job.
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, id) WHERE status = 'queued';

-- The ids of up to `n` claimable jobs of `kinds` (all kinds when empty), locked, in claim
-- order. A function for its settings alone: with no sort and no bitmap scan to choose, the
-- planner walks jobs_ready in order whatever the statistics say. (A queue that grew from
-- empty within a second has statistics by which sorting every queued job looks cheap, and a
-- prepared statement keeps that plan: measured, 15 ms per claim instead of 0.3 ms.)
CREATE FUNCTION cloudx_claimable(kinds TEXT[], now_us BIGINT, n BIGINT) RETURNS SETOF UUID
LANGUAGE sql VOLATILE
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
AS $$
  SELECT id FROM jobs WHERE status = 'queued' AND run_at <= now_us
    AND (cardinality(kinds) = 0 OR kind = ANY(kinds))
  ORDER BY priority DESC, run_at, id LIMIT n FOR UPDATE SKIP LOCKED
$$;
