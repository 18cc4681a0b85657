-- Identity: accounts, sessions (refresh-token families), API keys, invites and the audit log.
-- Ids are UUIDs stored as 16-byte blobs; times are RFC 3339 text in UTC.

CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    email         TEXT NOT NULL UNIQUE,        -- lower-cased
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,               -- PHC string (argon2id)
    role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    disabled_at   TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- A session is one login: a family of refresh tokens, each replacing the one before.
CREATE TABLE sessions (
    id             BLOB PRIMARY KEY NOT NULL,
    user_id        BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    revoked_reason TEXT,
    ip             TEXT,
    user_agent     TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Only hashes of refresh tokens are stored. `successor_sealed` is the token that replaced this
-- one, masked with a key derived from this token: only a holder of this token can read it back
-- (to answer a client that lost the reply within the grace window).
CREATE TABLE refresh_tokens (
    id               BLOB PRIMARY KEY NOT NULL,
    session_id       BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    token_hash       BLOB NOT NULL UNIQUE,
    created_at       TEXT NOT NULL,
    used_at          TEXT,
    successor_id     BLOB,
    successor_sealed BLOB
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE api_keys (
    id           BLOB PRIMARY KEY NOT NULL,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     BLOB NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,                -- comma-separated: read,write,exec,admin
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE invites (
    id         BLOB PRIMARY KEY NOT NULL,
    code_hash  BLOB NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_by BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    used_by    BLOB REFERENCES users (id) ON DELETE SET NULL
);

-- Append-only; each row carries the hash of the row before it (`cloudx audit verify`).
CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at         TEXT NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    actor_id   BLOB,
    target     TEXT,
    ip         TEXT,
    user_agent TEXT,
    detail     TEXT,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
