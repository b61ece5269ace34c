-- workspaced schema, version 3: what the lifecycle executor needs to find due workspaces
-- with indexed lookups whose cost grows with the number of due workspaces, not the fleet.

-- When a stopped workspace's autostart schedule next fires (on an allowed day), or NULL
-- when autostart does not apply (not stopped, failed, no schedule, autostart disabled).
-- Computed by the store (cron evaluation is Rust) whenever the latest build, the
-- schedule or the template's autostart options change; the daemon recomputes it for
-- every scheduled workspace at start, so rows written before this version are filled.
ALTER TABLE workspaces ADD COLUMN next_start_at INTEGER;
CREATE INDEX workspaces_live_next_start ON workspaces (next_start_at)
    WHERE deleted = 0 AND next_start_at IS NOT NULL;

-- Dormancy: per template, the workspaces inactive since before a bound.
CREATE INDEX workspaces_live_template_last_used ON workspaces (template_id, last_used_at)
    WHERE deleted = 0 AND dormant_at IS NULL;
