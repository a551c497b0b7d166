-- Materialized corruption summary, exact at all times, maintained by triggers in the
-- same transaction as the event that changes it (so direct writers such as Healarr
-- keep it exact too).
--
-- Meaning, per corruption aggregate, over its lifecycle events (every event of the
-- aggregate except NotificationSent / NotificationFailed):
--   current_state    event_type of the latest lifecycle event (highest id)
--   retry_count      lifecycle events of type DeletionFailed, SearchFailed,
--                    VerificationFailed, DownloadFailed, DownloadTimeout
--   file_path, path_id, corruption_type   from the first CorruptionDetected event
--   last_error       `error` of the latest lifecycle event with a non-null `error`
--   detected_at      created_at of the first lifecycle event
--   last_updated_at  created_at of the latest lifecycle event
-- An aggregate with no lifecycle events has no row.
--
-- event_data may be TEXT, a BLOB holding JSON text, or the literal null: it is read as
-- CAST(event_data AS TEXT) and only when json_valid, so odd rows never fail a write.

-- Healarr's (and the seed's) trigger, legacy view and summary table are replaced: the
-- summary is derived data and is rebuilt from the events below.
DROP TRIGGER IF EXISTS trg_update_corruption_summary;
DROP TRIGGER IF EXISTS update_corruption_summary;
DROP VIEW IF EXISTS corruption_status;
DROP TABLE IF EXISTS corruption_summary;

CREATE TABLE corruption_summary (
    corruption_id   TEXT PRIMARY KEY,
    current_state   TEXT NOT NULL,
    retry_count     INTEGER NOT NULL DEFAULT 0,
    file_path       TEXT,
    path_id         INTEGER,
    last_error      TEXT,
    corruption_type TEXT,
    detected_at     TIMESTAMP,
    last_updated_at TIMESTAMP
);
CREATE INDEX idx_corruption_summary_state ON corruption_summary(current_state, corruption_id);
CREATE INDEX idx_corruption_summary_path ON corruption_summary(path_id, corruption_id);
CREATE INDEX idx_corruption_summary_detected ON corruption_summary(detected_at);

-- "How many corruptions are in state X" is one primary-key lookup at any size.
CREATE TABLE corruption_state_counts (
    state TEXT PRIMARY KEY,
    count INTEGER NOT NULL
) WITHOUT ROWID;

-- The bucket of each known state (Healarr's newest classification). States not listed
-- here fall in no bucket and are reported as `other`.
CREATE TABLE corruption_state_buckets (
    state  TEXT PRIMARY KEY,
    bucket TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO corruption_state_buckets (state, bucket) VALUES
    ('CorruptionDetected', 'pending'),
    ('RemediationQueued', 'in_progress'),
    ('DeletionStarted', 'in_progress'),
    ('DeletionCompleted', 'in_progress'),
    ('SearchStarted', 'in_progress'),
    ('SearchCompleted', 'in_progress'),
    ('DownloadProgress', 'in_progress'),
    ('FileDetected', 'in_progress'),
    ('VerificationStarted', 'in_progress'),
    ('RetryScheduled', 'in_progress'),
    ('StuckRemediation', 'in_progress'),
    ('DeletionFailed', 'failed'),
    ('SearchFailed', 'failed'),
    ('VerificationFailed', 'failed'),
    ('DownloadFailed', 'failed'),
    ('DownloadTimeout', 'failed'),
    ('ImportBlocked', 'manual_intervention'),
    ('ManuallyRemoved', 'manual_intervention'),
    ('SearchExhausted', 'manual_intervention'),
    ('DownloadIgnored', 'manual_intervention'),
    ('VerificationSuccess', 'resolved'),
    ('MaxRetriesReached', 'orphaned'),
    ('CorruptionIgnored', 'ignored');

CREATE TRIGGER dbwarden_counts_on_summary_insert
AFTER INSERT ON corruption_summary
BEGIN
    INSERT INTO corruption_state_counts (state, count) VALUES (NEW.current_state, 1)
        ON CONFLICT (state) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER dbwarden_counts_on_summary_delete
AFTER DELETE ON corruption_summary
BEGIN
    UPDATE corruption_state_counts SET count = count - 1 WHERE state = OLD.current_state;
END;

CREATE TRIGGER dbwarden_counts_on_summary_state_change
AFTER UPDATE OF current_state ON corruption_summary
WHEN OLD.current_state IS NOT NEW.current_state
BEGIN
    UPDATE corruption_state_counts SET count = count - 1 WHERE state = OLD.current_state;
    INSERT INTO corruption_state_counts (state, count) VALUES (NEW.current_state, 1)
        ON CONFLICT (state) DO UPDATE SET count = count + 1;
END;

-- The summary computed from the events alone: the one definition of its meaning.
-- Used to rebuild rows after deletes and updates, at adoption, and by
-- `dbwarden check --summary`. A filter on corruption_id is pushed down to the index.
CREATE VIEW dbwarden_corruption_summary_recomputed AS
SELECT
    a.aggregate_id AS corruption_id,
    (SELECT e.event_type FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
      ORDER BY e.id DESC LIMIT 1) AS current_state,
    (SELECT count(*) FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type IN ('DeletionFailed', 'SearchFailed', 'VerificationFailed',
                             'DownloadFailed', 'DownloadTimeout')) AS retry_count,
    (SELECT CASE WHEN json_valid(CAST(e.event_data AS TEXT))
                 THEN json_extract(CAST(e.event_data AS TEXT), '$.file_path') END
       FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type = 'CorruptionDetected'
      ORDER BY e.id LIMIT 1) AS file_path,
    (SELECT CASE WHEN json_valid(CAST(e.event_data AS TEXT))
                 THEN json_extract(CAST(e.event_data AS TEXT), '$.path_id') END
       FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type = 'CorruptionDetected'
      ORDER BY e.id LIMIT 1) AS path_id,
    (SELECT json_extract(CAST(e.event_data AS TEXT), '$.error') FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
        AND json_valid(CAST(e.event_data AS TEXT))
        AND json_extract(CAST(e.event_data AS TEXT), '$.error') IS NOT NULL
      ORDER BY e.id DESC LIMIT 1) AS last_error,
    (SELECT CASE WHEN json_valid(CAST(e.event_data AS TEXT))
                 THEN json_extract(CAST(e.event_data AS TEXT), '$.corruption_type') END
       FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type = 'CorruptionDetected'
      ORDER BY e.id LIMIT 1) AS corruption_type,
    (SELECT e.created_at FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
      ORDER BY e.id LIMIT 1) AS detected_at,
    (SELECT e.created_at FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
      ORDER BY e.id DESC LIMIT 1) AS last_updated_at
FROM (SELECT DISTINCT aggregate_id FROM events
       WHERE aggregate_type = 'corruption'
         AND event_type NOT IN ('NotificationSent', 'NotificationFailed')) a;

-- Insert: O(log n), and as little work as possible in the common case. Each step is
-- a primary-key update guarded by a cheap condition: NEW.id is normally the highest
-- id (one look at the end of the rowid tree), so the "is there a later / earlier
-- event" seeks only run for rows inserted out of order; retry, error and detection
-- steps only run for the events that carry them; only the columns that change are
-- written, so untouched indexes stay untouched.
CREATE TRIGGER dbwarden_summary_on_event_insert
AFTER INSERT ON events
WHEN NEW.aggregate_type = 'corruption'
 AND NEW.event_type NOT IN ('NotificationSent', 'NotificationFailed')
BEGIN
    -- The latest lifecycle event sets the state.
    UPDATE corruption_summary
       SET current_state = NEW.event_type, last_updated_at = NEW.created_at
     WHERE corruption_id = NEW.aggregate_id
       AND (NEW.id >= (SELECT max(id) FROM events)
            OR NOT EXISTS (SELECT 1 FROM events e
                            WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                              AND e.id > NEW.id
                              AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')));

    -- Retries are counted as they come, never recounted.
    UPDATE corruption_summary SET retry_count = retry_count + 1
     WHERE (NEW.event_type = 'DeletionFailed' OR NEW.event_type = 'SearchFailed'
            OR NEW.event_type = 'VerificationFailed' OR NEW.event_type = 'DownloadFailed'
            OR NEW.event_type = 'DownloadTimeout')
       AND corruption_id = NEW.aggregate_id;

    -- The latest non-null error sticks.
    UPDATE corruption_summary
       SET last_error = json_extract(CAST(NEW.event_data AS TEXT), '$.error')
     WHERE corruption_id = NEW.aggregate_id
       AND json_valid(CAST(NEW.event_data AS TEXT))
       AND json_extract(CAST(NEW.event_data AS TEXT), '$.error') IS NOT NULL
       AND (NEW.id >= (SELECT max(id) FROM events)
            OR NOT EXISTS (SELECT 1 FROM events e
                            WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                              AND e.id > NEW.id
                              AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
                              AND json_valid(CAST(e.event_data AS TEXT))
                              AND json_extract(CAST(e.event_data AS TEXT), '$.error') IS NOT NULL));

    -- The first CorruptionDetected fixes file_path, path_id and corruption_type.
    UPDATE corruption_summary
       SET file_path = CASE WHEN json_valid(CAST(NEW.event_data AS TEXT))
                            THEN json_extract(CAST(NEW.event_data AS TEXT), '$.file_path') END,
           path_id = CASE WHEN json_valid(CAST(NEW.event_data AS TEXT))
                          THEN json_extract(CAST(NEW.event_data AS TEXT), '$.path_id') END,
           corruption_type = CASE WHEN json_valid(CAST(NEW.event_data AS TEXT))
                                  THEN json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type') END
     WHERE NEW.event_type = 'CorruptionDetected'
       AND corruption_id = NEW.aggregate_id
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_id = NEW.aggregate_id
                          AND e.event_type = 'CorruptionDetected'
                          AND e.aggregate_type = 'corruption'
                          AND e.id < NEW.id);

    -- A row inserted below existing ids (an explicit id) may be the first one.
    UPDATE corruption_summary SET detected_at = NEW.created_at
     WHERE NEW.id < (SELECT max(id) FROM events)
       AND corruption_id = NEW.aggregate_id
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.id < NEW.id
                          AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'));

    -- The aggregate's first lifecycle event creates its row. (VALUES, not a SELECT:
    -- INSERT ... SELECT into a table with triggers goes through a temporary table.)
    INSERT INTO corruption_summary (corruption_id, current_state, retry_count, file_path,
                                    path_id, last_error, corruption_type, detected_at,
                                    last_updated_at)
    VALUES (
        NEW.aggregate_id,
        NEW.event_type,
        (NEW.event_type = 'DeletionFailed' OR NEW.event_type = 'SearchFailed'
            OR NEW.event_type = 'VerificationFailed' OR NEW.event_type = 'DownloadFailed'
            OR NEW.event_type = 'DownloadTimeout'),
        CASE WHEN NEW.event_type = 'CorruptionDetected' AND json_valid(CAST(NEW.event_data AS TEXT))
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.file_path') END,
        CASE WHEN NEW.event_type = 'CorruptionDetected' AND json_valid(CAST(NEW.event_data AS TEXT))
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.path_id') END,
        CASE WHEN json_valid(CAST(NEW.event_data AS TEXT))
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.error') END,
        CASE WHEN NEW.event_type = 'CorruptionDetected' AND json_valid(CAST(NEW.event_data AS TEXT))
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type') END,
        NEW.created_at,
        NEW.created_at)
    ON CONFLICT (corruption_id) DO NOTHING;
END;

-- Delete and update are rare (pruning, DELETE /api/corruptions/{id}): the aggregate's
-- row is rebuilt from its remaining events with the index, O(k log n) for k events.
CREATE TRIGGER dbwarden_summary_on_event_delete
AFTER DELETE ON events
WHEN OLD.aggregate_type = 'corruption'
 AND OLD.event_type NOT IN ('NotificationSent', 'NotificationFailed')
BEGIN
    DELETE FROM corruption_summary WHERE corruption_id = OLD.aggregate_id;
    INSERT INTO corruption_summary
        SELECT * FROM dbwarden_corruption_summary_recomputed
         WHERE corruption_id = OLD.aggregate_id;
END;

CREATE TRIGGER dbwarden_summary_on_event_update
AFTER UPDATE ON events
WHEN OLD.aggregate_type = 'corruption' OR NEW.aggregate_type = 'corruption'
BEGIN
    DELETE FROM corruption_summary
     WHERE corruption_id IN (OLD.aggregate_id, NEW.aggregate_id);
    INSERT INTO corruption_summary
        SELECT * FROM dbwarden_corruption_summary_recomputed
         WHERE corruption_id IN (OLD.aggregate_id, NEW.aggregate_id);
END;

-- Rebuild from whatever events exist (a Healarr database being adopted, or none).
INSERT INTO corruption_summary SELECT * FROM dbwarden_corruption_summary_recomputed;

-- The legacy name, now a thin view over the table for old readers.
CREATE VIEW corruption_status AS
SELECT corruption_id, current_state, retry_count, file_path, path_id, last_error,
       corruption_type, detected_at, last_updated_at
  FROM corruption_summary;
