-- Identity: accounts, sessions (refresh-token families), API keys, invites and the audit log.

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,        -- lower-cased
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,               -- PHC string (argon2id)
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    disabled_at   TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- A session is one login: a family of refresh tokens, each replacing the one before.
CREATE TABLE sessions (
    id             UUID PRIMARY KEY,
    user_id        UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     TIMESTAMPTZ NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ,
    revoked_reason TEXT,
    ip             TEXT,
    user_agent     TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Only hashes of refresh tokens are stored. `successor_sealed` is the token that replaced this
-- one, masked with a key derived from this token: only a holder of this token can read it back
-- (to answer a client that lost the reply within the grace window).
CREATE TABLE refresh_tokens (
    id               UUID PRIMARY KEY,
    session_id       UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    token_hash       BYTEA NOT NULL UNIQUE,
    created_at       TIMESTAMPTZ NOT NULL,
    used_at          TIMESTAMPTZ,
    successor_id     UUID,
    successor_sealed BYTEA
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     BYTEA NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,                -- comma-separated: read,write,exec,admin
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE invites (
    id         UUID PRIMARY KEY,
    code_hash  BYTEA NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_by UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    used_by    UUID REFERENCES users (id) ON DELETE SET NULL
);

-- Append-only; each row carries the hash of the row before it (`cloudx audit verify`).
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    actor_id   UUID,
    target     TEXT,
    ip         TEXT,
    user_agent TEXT,
    detail     TEXT,
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL
);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
