-- workspaced schema, version 6: indexes for pruning history (`[retention]`).
--
-- Every pruning statement deletes a bounded batch of the oldest prunable rows; these
-- indexes let it find them without scanning what is kept.

-- Outbox rows still referenced by a webhook delivery are kept.
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
-- Finished deliveries, oldest first.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at) WHERE status <> 'pending';
-- Sent or failed notifications, oldest first.
CREATE INDEX notifications_finished ON notifications (created_at) WHERE status <> 'pending';
-- Finished jobs that still have log lines (log_bytes is zeroed when they are pruned).
CREATE INDEX provisioner_jobs_logged ON provisioner_jobs (completed_at)
    WHERE log_bytes > 0 AND completed_at IS NOT NULL;
-- Deleted workspaces, by when they were deleted.
CREATE INDEX workspaces_deleted ON workspaces (updated_at) WHERE deleted = 1;
-- Replacements recorded for a workspace (deleting a deleted workspace's history).
CREATE INDEX resource_replacements_workspace ON resource_replacements (workspace_id);
