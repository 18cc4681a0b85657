-- The sandbox policy of a project (JSON; NULL: the configured defaults).
ALTER TABLE projects ADD COLUMN sandbox_policy TEXT;
