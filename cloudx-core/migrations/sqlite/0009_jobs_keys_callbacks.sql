-- A job submitted with an API key runs with that key's scopes (while the key is valid), not
-- with every right of its owner.
ALTER TABLE jobs ADD COLUMN api_key_id BLOB;

-- The optional webhook told when the job ends: pending until delivered (or failed for good
-- after its attempts); callback_next is when a worker may (next) try, and doubles as the
-- lease of the worker trying.
ALTER TABLE jobs ADD COLUMN callback_url TEXT;
ALTER TABLE jobs ADD COLUMN callback_state TEXT CHECK (callback_state IN ('pending', 'delivered', 'failed'));
ALTER TABLE jobs ADD COLUMN callback_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN callback_next BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN callback_error TEXT;
CREATE INDEX jobs_callbacks ON jobs (callback_next) WHERE callback_state = 'pending' AND finished_at IS NOT NULL;

-- Which attempt said it (events of a failed attempt stay, told apart from the next one's).
ALTER TABLE job_events ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
