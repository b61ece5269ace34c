-- workspaced schema, version 2: a summary of each workspace's latest build on the
-- workspace row.
--
-- Every loop reads "the latest build and its job" of every live workspace; finding it per
-- row (MAX(build_number), then the build, then the job) dominated the reconciler's
-- snapshot read. The summary is recomputed from workspace_builds and provisioner_jobs by
-- the store whenever a build is enqueued or its job changes state (store::builds::
-- refresh_latest), in the same transaction, so it never disagrees with them.
-- NULL latest_build_number = the workspace has no builds.

ALTER TABLE workspaces ADD COLUMN latest_build_number INTEGER;
ALTER TABLE workspaces ADD COLUMN latest_transition TEXT
    CHECK (latest_transition IN ('start', 'stop', 'delete'));
ALTER TABLE workspaces ADD COLUMN latest_job_status TEXT
    CHECK (latest_job_status IN ('pending', 'running', 'succeeded', 'failed', 'canceling', 'canceled'));
ALTER TABLE workspaces ADD COLUMN latest_template_version_id TEXT;
ALTER TABLE workspaces ADD COLUMN latest_preset_id TEXT;
ALTER TABLE workspaces ADD COLUMN latest_initiator_id TEXT;
ALTER TABLE workspaces ADD COLUMN latest_build_created_at INTEGER;
ALTER TABLE workspaces ADD COLUMN latest_job_completed_at INTEGER;
ALTER TABLE workspaces ADD COLUMN latest_deadline INTEGER;

UPDATE workspaces SET (
    latest_build_number, latest_transition, latest_job_status, latest_template_version_id,
    latest_preset_id, latest_initiator_id, latest_build_created_at, latest_job_completed_at,
    latest_deadline
) = (
    SELECT b.build_number, b.transition, j.status, b.template_version_id, b.preset_id,
           b.initiator_id, b.created_at, j.completed_at, b.deadline
      FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
     WHERE b.workspace_id = workspaces.id
     ORDER BY b.build_number DESC LIMIT 1
);

-- Lifecycle: started workspaces with an autostop deadline.
CREATE INDEX workspaces_live_deadline ON workspaces (latest_deadline)
    WHERE deleted = 0 AND latest_deadline IS NOT NULL;
-- Lifecycle: failed starts waiting for the failure TTL.
CREATE INDEX workspaces_live_failed_start ON workspaces (latest_job_completed_at)
    WHERE deleted = 0 AND latest_job_status = 'failed';
