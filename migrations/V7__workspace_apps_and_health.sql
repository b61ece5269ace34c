-- workspaced schema, version 7: what a developer connects to, and whether it answers.
--
-- apps: the workspace's connection info as the last successful start reported it, a JSON
-- array of {"name", "url"}; NULL when it reports none or is not running.
-- health: the readiness probe's verdict on a running workspace ('healthy' or
-- 'unhealthy'); NULL when nothing probes it (no probe, not running). health_since is when
-- the verdict last changed, health_error the last failure (NULL while healthy).
ALTER TABLE workspaces ADD COLUMN apps TEXT;
ALTER TABLE workspaces ADD COLUMN health TEXT CHECK (health IN ('healthy', 'unhealthy'));
ALTER TABLE workspaces ADD COLUMN health_error TEXT;
ALTER TABLE workspaces ADD COLUMN health_since INTEGER;

-- This installation's id: the label that tells this daemon's containers and volumes from
-- those of another installation on the same engine (never swept as orphans, never
-- touched). Chosen once, kept across moves of the data directory.
CREATE TABLE installation (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);
INSERT INTO installation (id, created_at)
    VALUES (lower(hex(randomblob(16))), CAST(unixepoch('subsec') * 1000 AS INTEGER));
