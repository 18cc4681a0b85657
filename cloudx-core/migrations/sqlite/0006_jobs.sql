-- The durable job queue. Times are microseconds since the Unix epoch (the same integers on
-- both dialects, compared as numbers). A job is queued, running (leased to a worker until
-- lease_until; attempts counts the leases, and fences late answers), then succeeded, dead
-- (out of attempts, or refused for good) or cancelled.

CREATE TABLE jobs (
    id               BLOB PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL,
    project_id       BLOB REFERENCES projects (id) ON DELETE CASCADE,
    -- Who submitted it (the nil id for the local system principal).
    created_by       BLOB NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'dead', 'cancelled')),
    priority         BIGINT NOT NULL,
    payload          TEXT NOT NULL,
    result           TEXT,
    last_error       TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    run_at           BIGINT NOT NULL,
    lease_until      BIGINT,
    worker_id        BLOB,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (created_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_ready ON jobs (priority DESC, run_at) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_project ON jobs (project_id, created_at);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- What a job said while it ran: progress, log lines, results; numbered from 1 per job.
CREATE TABLE job_events (
    job_id BLOB NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at     BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
