-- workspaced schema, version 9: why a workspace counts as active.
--
-- last_used_source: what reported the workspace's last_used_at: 'api' (POST
-- /api/v1/workspaces/{id}/activity), 'proxy' (a request or WebSocket data through the app
-- proxy), 'backend' (connections the backend saw on its ports). NULL when nothing has
-- reported use since the workspace was created or claimed.
ALTER TABLE workspaces ADD COLUMN last_used_source TEXT
    CHECK (last_used_source IN ('api', 'proxy', 'backend'));
