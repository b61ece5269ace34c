-- workspaced schema, version 10: lifetime prebuild figures kept as they happen.
--
-- prebuild_totals: per preset, prebuilds created (their first start build), prebuild start
-- builds that failed, and workspaces claimed from the pool. Triggers keep it in the same
-- transaction as the build or job row that changes it, so the figures survive restarts and
-- retention (which prunes old builds) without recounting all build history every cycle.
CREATE TABLE prebuild_totals (
    preset_id TEXT PRIMARY KEY REFERENCES presets (id) ON DELETE CASCADE,
    created   INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    claimed   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- What the history still holds (the figures version 9 computed every cycle).
INSERT INTO prebuild_totals (preset_id, created, failed, claimed)
SELECT b.preset_id,
       SUM(b.is_prebuild AND b.transition = 'start' AND b.build_number = 1),
       SUM(b.is_prebuild AND b.transition = 'start' AND j.status = 'failed'),
       COUNT(DISTINCT CASE WHEN b.is_prebuild_claim THEN b.workspace_id END)
  FROM workspace_builds b
  JOIN provisioner_jobs j ON j.id = b.job_id
  JOIN presets p ON p.id = b.preset_id
 WHERE b.preset_id IS NOT NULL
 GROUP BY b.preset_id;

CREATE TRIGGER prebuild_totals_created AFTER INSERT ON workspace_builds
WHEN NEW.preset_id IS NOT NULL AND NEW.is_prebuild AND NEW.transition = 'start'
     AND NEW.build_number = 1
BEGIN
    INSERT INTO prebuild_totals (preset_id, created) VALUES (NEW.preset_id, 1)
        ON CONFLICT (preset_id) DO UPDATE SET created = created + 1;
END;

-- A claim is one workspace: a claim build re-queued after an interruption counts once.
CREATE TRIGGER prebuild_totals_claimed AFTER INSERT ON workspace_builds
WHEN NEW.preset_id IS NOT NULL AND NEW.is_prebuild_claim
     AND NOT EXISTS (SELECT 1 FROM workspace_builds
                      WHERE workspace_id = NEW.workspace_id AND is_prebuild_claim AND id <> NEW.id)
BEGIN
    INSERT INTO prebuild_totals (preset_id, claimed) VALUES (NEW.preset_id, 1)
        ON CONFLICT (preset_id) DO UPDATE SET claimed = claimed + 1;
END;

CREATE TRIGGER prebuild_totals_failed AFTER UPDATE OF status ON provisioner_jobs
WHEN NEW.status = 'failed' AND OLD.status <> 'failed'
BEGIN
    INSERT INTO prebuild_totals (preset_id, failed)
    SELECT preset_id, 1 FROM workspace_builds
     WHERE job_id = NEW.id AND preset_id IS NOT NULL AND is_prebuild AND transition = 'start'
        ON CONFLICT (preset_id) DO UPDATE SET failed = failed + 1;
END;
