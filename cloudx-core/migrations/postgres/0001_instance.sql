-- The instance this database belongs to: one row, written on first start.
CREATE TABLE instance (
    id         UUID PRIMARY KEY,
    singleton  BOOLEAN NOT NULL DEFAULT TRUE UNIQUE CHECK (singleton),
    created_at TIMESTAMPTZ NOT NULL
);
