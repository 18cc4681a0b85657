-- The worker processes (and the pools inside cloudx serve) that run jobs, with their heartbeats.
-- A worker whose heartbeat is old is gone: its jobs come back when their leases run out.

CREATE TABLE workers (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,         -- host name and pid
    kinds        TEXT NOT NULL,         -- the job kinds it runs (a JSON array)
    concurrency  BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,       -- microseconds since the epoch
    heartbeat_at BIGINT NOT NULL,
    stopped_at   BIGINT
);
CREATE INDEX workers_heartbeat ON workers (heartbeat_at);
