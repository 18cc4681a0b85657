-- One-time tickets that authenticate a WebSocket upgrade (browsers cannot send headers there).
-- A ticket is redeemed by deleting its row, so it works once, on whichever node it reaches.
CREATE TABLE ws_tickets (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes     TEXT NOT NULL,
    api_key_id UUID REFERENCES api_keys (id) ON DELETE CASCADE,
    -- The session that asked for it (none for an API key): it must still be live at redemption.
    session_id UUID,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ws_tickets_expiry ON ws_tickets (expires_at);

-- Accounts deleted recently. Deleting a user removes its sessions with it, so the revocation set
-- that every node rebuilds from the database would forget the user while access tokens of theirs
-- can still be valid; these rows keep them refused until then (older rows are pruned).
CREATE TABLE deleted_users (
    id         UUID PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL
);
