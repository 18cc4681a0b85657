-- Projects, their members, and their versioned file trees. File contents are blobs in the
-- object store, named by their SHA-256 (hex); these tables hold everything else.

CREATE TABLE projects (
    id          BLOB PRIMARY KEY NOT NULL,
    -- Whose namespace the slug is in. Accounts that own projects cannot be deleted.
    owner_id    BLOB NOT NULL REFERENCES users (id),
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    head        INTEGER NOT NULL DEFAULT 0,   -- the latest version (each write makes the next)
    bytes       INTEGER NOT NULL DEFAULT 0,   -- the size of the current files
    files       INTEGER NOT NULL DEFAULT 0,   -- how many current files there are
    quota_bytes INTEGER,                      -- set by an administrator; else the configured one
    quota_files INTEGER,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    deleted_at  TEXT,
    UNIQUE (owner_id, slug)
);

CREATE TABLE project_members (
    project_id BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    added_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (user_id);

-- Every version of every path. A write of several paths (a move, an archive) gives them all
-- the same version. `sha256` is NULL for a deletion. Authors are not foreign keys: history
-- outlives accounts.
CREATE TABLE file_versions (
    project_id   BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    sha256       TEXT,
    size         INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    author_id    BLOB,
    message      TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, path, version)
);
CREATE INDEX file_versions_version ON file_versions (project_id, version);
CREATE INDEX file_versions_blob ON file_versions (sha256);

-- The current tree: the latest version of each path that is not deleted.
CREATE TABLE files (
    project_id   BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    path         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    modified_at  TEXT NOT NULL,
    PRIMARY KEY (project_id, path)
);

-- Blobs being written: the garbage collector leaves them alone until the write commits. One
-- lease (id) may cover many blobs (an archive's).
CREATE TABLE blob_leases (
    id         BLOB NOT NULL,
    sha256     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (id, sha256)
);
CREATE INDEX blob_leases_blob ON blob_leases (sha256);
