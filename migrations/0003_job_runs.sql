-- Run history of scheduled jobs (built-in and custom). dbwarden keeps the newest
-- `jobs.history_keep` runs of each job and deletes older ones as it records new ones.
CREATE TABLE IF NOT EXISTS dbwarden_job_runs (
    id          INTEGER PRIMARY KEY,
    job         TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,   -- schedule | startup | api | cli
    started_at  TEXT    NOT NULL,   -- RFC 3339, UTC
    duration_ms INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,   -- ok | failed | timed_out | cancelled
    message     TEXT    NOT NULL,
    output      TEXT                -- tail of a command's output, or NULL
);

CREATE INDEX IF NOT EXISTS dbwarden_job_runs_by_job ON dbwarden_job_runs (job, id);
