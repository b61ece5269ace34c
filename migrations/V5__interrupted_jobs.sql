-- workspaced schema, version 5: jobs interrupted by the daemon itself.
--
-- A job that was running when the daemon crashed, was killed or shut down is
-- `interrupted`: neither the template's failure (it must not feed backoff or the hard
-- limit) nor a user's cancel. SQLite cannot change a CHECK constraint in place, so the
-- table is rebuilt (the documented 12-step procedure; the store runs migrations with
-- foreign keys off and checks them afterwards). `process_group` records the process group
-- of an exec provisioner and `process_started` its start time in clock ticks since boot
-- (from /proc), so recovery after a crash kills exactly that group and never a process
-- that reused the id.
--
-- The latest-build summary on `workspaces` (V2) keeps its CHECK: it holds the planner's
-- view, in which an interrupted job reads as `canceled` (store::builds::refresh_latest).

CREATE TABLE provisioner_jobs_v5 (
    id            TEXT PRIMARY KEY NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0 CHECK (priority IN (0, 1, 2)),
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'canceling',
                                    'canceled', 'interrupted')),
    backend       TEXT NOT NULL,
    worker_id     TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    canceled_at   INTEGER,
    error         TEXT,
    error_code    TEXT,
    log_bytes     INTEGER NOT NULL DEFAULT 0,
    process_group INTEGER,
    process_started INTEGER
);

INSERT INTO provisioner_jobs_v5 (id, priority, status, backend, worker_id, created_at,
        updated_at, started_at, completed_at, canceled_at, error, error_code, log_bytes)
    SELECT id, priority, status, backend, worker_id, created_at, updated_at, started_at,
           completed_at, canceled_at, error, error_code, log_bytes
      FROM provisioner_jobs;

DROP TABLE provisioner_jobs;
ALTER TABLE provisioner_jobs_v5 RENAME TO provisioner_jobs;

CREATE INDEX provisioner_jobs_pending ON provisioner_jobs (priority, created_at) WHERE status = 'pending';
CREATE INDEX provisioner_jobs_running ON provisioner_jobs (status, started_at) WHERE status IN ('running', 'canceling');
-- Start-up: interrupted builds to re-queue or clean up.
CREATE INDEX provisioner_jobs_interrupted ON provisioner_jobs (completed_at) WHERE status = 'interrupted';
