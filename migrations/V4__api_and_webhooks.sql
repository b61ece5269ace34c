-- workspaced schema, version 4: what the HTTP API and webhook delivery need.

-- Webhook delivery. Each configured webhook (by name) reads the outbox from its cursor
-- on; every event that passes its filter becomes one delivery row, retried with
-- exponential backoff until delivered or dead (after the webhook's max_attempts).
CREATE TABLE webhook_cursors (
    webhook        TEXT PRIMARY KEY NOT NULL,
    last_event_id  INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook          TEXT NOT NULL,
    event_id         INTEGER NOT NULL REFERENCES outbox (id),
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (webhook, event_id)
);
-- Delivery worker: the due pending deliveries.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- API: dead letters.
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (webhook, id) WHERE status = 'dead';

-- API: the audit log of one organization, newest first.
CREATE INDEX audit_log_organization_time ON audit_log (organization_id, time);

-- Claims: the ready prebuilds of a preset, oldest first. (No column the API binds as a
-- parameter appears in the WHERE: a query comparing such a column to a parameter would be
-- re-prepared by SQLite on every execution, to re-check the index's usability.)
CREATE INDEX workspaces_claimable ON workspaces (owner_id, preset_id, created_at, id)
    WHERE deleted = 0 AND agents_ready = 1 AND latest_transition = 'start'
      AND latest_job_status = 'succeeded';
