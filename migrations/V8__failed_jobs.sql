-- workspaced schema, version 8: the status page's "recent failed builds" reads the newest
-- failed jobs through this index instead of scanning every job.
CREATE INDEX provisioner_jobs_failed ON provisioner_jobs (completed_at) WHERE status = 'failed';
