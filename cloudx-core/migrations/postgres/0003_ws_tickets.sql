-- One-time tickets that authenticate a WebSocket upgrade (browsers cannot send headers there).
-- A ticket is redeemed by deleting its row, so it works once, on whichever node it reaches.
CREATE TABLE ws_tickets (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes     TEXT NOT NULL,
    api_key_id UUID REFERENCES api_keys (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ws_tickets_expiry ON ws_tickets (expires_at);
