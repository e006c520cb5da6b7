-- Sluice's tables on PostgreSQL, version 2: the job store (`SqlJobStore`) of job status,
-- cancellations and unique locks. A versioned map of JSON documents with a time to live:
-- `version` changes on every write (from the sequence), and a write that expects a version
-- only lands while the row still has it.
CREATE SEQUENCE IF NOT EXISTS sluice_jobs_version;
CREATE TABLE IF NOT EXISTS sluice_jobs (
    key        TEXT   PRIMARY KEY,
    value      TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sluice_jobs_expires ON sluice_jobs (expires_at);
CREATE INDEX IF NOT EXISTS sluice_jobs_recent ON sluice_jobs (version);
