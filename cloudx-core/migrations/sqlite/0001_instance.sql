-- The instance this database belongs to: one row, written on first start.
CREATE TABLE instance (
    id         TEXT PRIMARY KEY NOT NULL,
    singleton  INTEGER NOT NULL DEFAULT 1 UNIQUE CHECK (singleton = 1),
    created_at TEXT NOT NULL
);
