-- The summary's meaning as Healarr's newest version defines it, and detection facts
-- that outlive the events that carried them.
--
-- Meaning, per corruption aggregate, over its lifecycle events (every event of the
-- aggregate except NotificationSent / NotificationFailed):
--   current_state    event_type of the latest lifecycle event (highest id)
--   retry_count      lifecycle events of type DeletionFailed, SearchFailed,
--                    VerificationFailed, DownloadFailed, DownloadTimeout
--   last_error       `error` of the latest lifecycle event; NULL when it carries none
--                    (a resolved corruption shows no old error)
--   file_path, path_id, corruption_type
--                    each from the latest CorruptionDetected event that carries the
--                    field (a later one carrying it replaces it; no other event type
--                    ever changes them)
--   detected_at      created_at of the first lifecycle event
--   last_updated_at  created_at of the latest lifecycle event
-- An aggregate with no lifecycle events has no row.
--
-- Kept facts. Healarr prunes old events (`DELETE FROM events WHERE created_at < ?`),
-- which often removes a corruption's CorruptionDetected while its later events stay;
-- Healarr's readers need the file path to survive that. So a delete never changes
-- what the deleted events established: when the event that carries the current value
-- of a detection field (or the first lifecycle event) is deleted while the aggregate
-- still has lifecycle events, its value is written to `dbwarden_kept_facts` together
-- with the deleted event's id. The recomputation reads those rows as if the deleted
-- events were still there, which keeps the summary a deterministic function of what
-- is stored:
--   a detection field = the value of the highest-id carrier among the aggregate's
--                       CorruptionDetected events and its kept value;
--   detected_at       = created_at of the lowest-id one among its lifecycle events
--                       and its kept detection time;
--   on equal ids a stored event wins over a kept value (it was written later).
-- Equivalently: the facts are those of every event the aggregate ever had, deleted
-- ones included, since its first lifecycle event. Deleting all of an aggregate's
-- lifecycle events removes its row and its kept facts. An UPDATE counts as removing
-- the old version of the row (what it established is kept) and writing the new one.
--
-- event_data may be TEXT, a BLOB holding JSON text, or the literal null: it is read as
-- CAST(event_data AS TEXT) and only when json_valid, so odd rows never fail a write.

CREATE TABLE dbwarden_kept_facts (
    corruption_id            TEXT PRIMARY KEY,
    file_path,
    file_path_event_id       INTEGER,
    path_id,
    path_id_event_id         INTEGER,
    corruption_type,
    corruption_type_event_id INTEGER,
    detected_at,
    detected_at_event_id     INTEGER
) WITHOUT ROWID;

-- Small facts dbwarden keeps about itself: the last clean stop, the Healarr schema
-- version it last saw.
CREATE TABLE IF NOT EXISTS dbwarden_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- States of newer Healarr versions.
INSERT OR IGNORE INTO corruption_state_buckets (state, bucket) VALUES
    ('ReleaseBlocklisted', 'in_progress'),
    ('MonitorOverridden', 'in_progress'),
    ('RemediationPaused', 'manual_intervention');

DROP TRIGGER IF EXISTS dbwarden_summary_on_event_insert;
DROP TRIGGER IF EXISTS dbwarden_summary_on_event_delete;
DROP TRIGGER IF EXISTS dbwarden_summary_on_event_update;
DROP VIEW IF EXISTS dbwarden_corruption_summary_recomputed;

-- The summary computed from the stored events and kept facts alone: the one
-- definition of its meaning. Used to rebuild rows after deletes and updates, at
-- adoption, by repairs and by `dbwarden check --summary`. A filter on corruption_id
-- is pushed down to the indexes.
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
    (SELECT v FROM (
        SELECT e.id AS id, 1 AS stored, json_extract(CAST(e.event_data AS TEXT), '$.file_path') AS v
          FROM events e
         WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
           AND e.event_type = 'CorruptionDetected'
           AND json_valid(CAST(e.event_data AS TEXT))
           AND json_extract(CAST(e.event_data AS TEXT), '$.file_path') IS NOT NULL
        UNION ALL
        SELECT k.file_path_event_id, 0, k.file_path FROM dbwarden_kept_facts k
         WHERE k.corruption_id = a.aggregate_id AND k.file_path_event_id IS NOT NULL)
      ORDER BY id DESC, stored DESC LIMIT 1) AS file_path,
    (SELECT v FROM (
        SELECT e.id AS id, 1 AS stored, json_extract(CAST(e.event_data AS TEXT), '$.path_id') AS v
          FROM events e
         WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
           AND e.event_type = 'CorruptionDetected'
           AND json_valid(CAST(e.event_data AS TEXT))
           AND json_extract(CAST(e.event_data AS TEXT), '$.path_id') IS NOT NULL
        UNION ALL
        SELECT k.path_id_event_id, 0, k.path_id FROM dbwarden_kept_facts k
         WHERE k.corruption_id = a.aggregate_id AND k.path_id_event_id IS NOT NULL)
      ORDER BY id DESC, stored DESC LIMIT 1) AS path_id,
    (SELECT CASE WHEN json_valid(CAST(e.event_data AS TEXT))
                 THEN json_extract(CAST(e.event_data AS TEXT), '$.error') END
       FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
      ORDER BY e.id DESC LIMIT 1) AS last_error,
    (SELECT v FROM (
        SELECT e.id AS id, 1 AS stored, json_extract(CAST(e.event_data AS TEXT), '$.corruption_type') AS v
          FROM events e
         WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
           AND e.event_type = 'CorruptionDetected'
           AND json_valid(CAST(e.event_data AS TEXT))
           AND json_extract(CAST(e.event_data AS TEXT), '$.corruption_type') IS NOT NULL
        UNION ALL
        SELECT k.corruption_type_event_id, 0, k.corruption_type FROM dbwarden_kept_facts k
         WHERE k.corruption_id = a.aggregate_id AND k.corruption_type_event_id IS NOT NULL)
      ORDER BY id DESC, stored DESC LIMIT 1) AS corruption_type,
    (SELECT t FROM (
        SELECT e.id AS id, 1 AS stored, e.created_at AS t FROM events e
         WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
           AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
        UNION ALL
        SELECT k.detected_at_event_id, 0, k.detected_at FROM dbwarden_kept_facts k
         WHERE k.corruption_id = a.aggregate_id AND k.detected_at_event_id IS NOT NULL)
      ORDER BY id ASC, stored DESC LIMIT 1) AS detected_at,
    (SELECT e.created_at FROM events e
      WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = a.aggregate_id
        AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
      ORDER BY e.id DESC LIMIT 1) AS last_updated_at
FROM (SELECT DISTINCT aggregate_id FROM events
       WHERE aggregate_type = 'corruption'
         AND event_type NOT IN ('NotificationSent', 'NotificationFailed')) a;

-- Insert: O(log n), and as little work as possible in the common case. NEW.id is
-- normally the highest id (one look at the end of the rowid tree), so the "is there a
-- later / earlier event" seeks only run for rows inserted out of order; detection
-- steps only run for CorruptionDetected events.
CREATE TRIGGER dbwarden_summary_on_event_insert
AFTER INSERT ON events
WHEN NEW.aggregate_type = 'corruption'
 AND NEW.event_type NOT IN ('NotificationSent', 'NotificationFailed')
BEGIN
    -- The latest lifecycle event sets the state, the time and the error.
    UPDATE corruption_summary
       SET current_state = NEW.event_type,
           last_updated_at = NEW.created_at,
           last_error = CASE WHEN json_valid(CAST(NEW.event_data AS TEXT))
                             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.error') END
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

    -- A CorruptionDetected sets each detection field it carries, unless a later
    -- carrier of that field exists (stored, or kept after its deletion).
    UPDATE corruption_summary
       SET file_path = CASE
             WHEN json_extract(CAST(NEW.event_data AS TEXT), '$.file_path') IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM events e
                               WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                                 AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                                 AND json_valid(CAST(e.event_data AS TEXT))
                                 AND json_extract(CAST(e.event_data AS TEXT), '$.file_path') IS NOT NULL)
              AND NOT EXISTS (SELECT 1 FROM dbwarden_kept_facts k
                               WHERE k.corruption_id = NEW.aggregate_id AND k.file_path_event_id > NEW.id)
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.file_path') ELSE file_path END,
           path_id = CASE
             WHEN json_extract(CAST(NEW.event_data AS TEXT), '$.path_id') IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM events e
                               WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                                 AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                                 AND json_valid(CAST(e.event_data AS TEXT))
                                 AND json_extract(CAST(e.event_data AS TEXT), '$.path_id') IS NOT NULL)
              AND NOT EXISTS (SELECT 1 FROM dbwarden_kept_facts k
                               WHERE k.corruption_id = NEW.aggregate_id AND k.path_id_event_id > NEW.id)
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.path_id') ELSE path_id END,
           corruption_type = CASE
             WHEN json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type') IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM events e
                               WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                                 AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                                 AND json_valid(CAST(e.event_data AS TEXT))
                                 AND json_extract(CAST(e.event_data AS TEXT), '$.corruption_type') IS NOT NULL)
              AND NOT EXISTS (SELECT 1 FROM dbwarden_kept_facts k
                               WHERE k.corruption_id = NEW.aggregate_id AND k.corruption_type_event_id > NEW.id)
             THEN json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type') ELSE corruption_type END
     WHERE NEW.event_type = 'CorruptionDetected'
       AND corruption_id = NEW.aggregate_id
       AND json_valid(CAST(NEW.event_data AS TEXT));

    -- A row inserted below existing ids (an explicit id) may be the first one.
    UPDATE corruption_summary SET detected_at = NEW.created_at
     WHERE NEW.id < (SELECT max(id) FROM events)
       AND corruption_id = NEW.aggregate_id
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.id < NEW.id
                          AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'))
       AND NOT EXISTS (SELECT 1 FROM dbwarden_kept_facts k
                        WHERE k.corruption_id = NEW.aggregate_id AND k.detected_at_event_id < NEW.id);

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

-- Removing an event (a DELETE, or the old version of a row an UPDATE rewrites) goes
-- through this table, so the rule for what a removed event leaves behind is written
-- once. Nothing is ever stored in it: its trigger applies the rule, then RAISE(IGNORE)
-- drops the insert (the statements before it stay done).
CREATE TABLE dbwarden_removed_event (
    id             INTEGER,
    aggregate_type TEXT,
    aggregate_id   TEXT,
    event_type     TEXT,
    event_data,
    created_at
);

CREATE TRIGGER dbwarden_keep_what_removed_event_established
BEFORE INSERT ON dbwarden_removed_event
BEGIN
    -- Only a CorruptionDetected or a first event can hold something worth keeping,
    -- and only while lifecycle events of the aggregate remain.
    INSERT INTO dbwarden_kept_facts (corruption_id)
    SELECT NEW.aggregate_id
     WHERE NEW.aggregate_type = 'corruption'
       AND NEW.event_type NOT IN ('NotificationSent', 'NotificationFailed')
       AND (NEW.event_type = 'CorruptionDetected'
            OR NOT EXISTS (SELECT 1 FROM events e
                            WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                              AND e.id < NEW.id
                              AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')))
       AND EXISTS (SELECT 1 FROM events e
                    WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                      AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'))
    ON CONFLICT (corruption_id) DO NOTHING;

    -- The removed event carried the current value of a field: keep it.
    UPDATE dbwarden_kept_facts
       SET file_path = json_extract(CAST(NEW.event_data AS TEXT), '$.file_path'),
           file_path_event_id = NEW.id
     WHERE corruption_id = NEW.aggregate_id
       AND NEW.aggregate_type = 'corruption' AND NEW.event_type = 'CorruptionDetected'
       AND json_valid(CAST(NEW.event_data AS TEXT))
       AND json_extract(CAST(NEW.event_data AS TEXT), '$.file_path') IS NOT NULL
       AND (file_path_event_id IS NULL OR file_path_event_id <= NEW.id)
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                          AND json_valid(CAST(e.event_data AS TEXT))
                          AND json_extract(CAST(e.event_data AS TEXT), '$.file_path') IS NOT NULL);
    UPDATE dbwarden_kept_facts
       SET path_id = json_extract(CAST(NEW.event_data AS TEXT), '$.path_id'),
           path_id_event_id = NEW.id
     WHERE corruption_id = NEW.aggregate_id
       AND NEW.aggregate_type = 'corruption' AND NEW.event_type = 'CorruptionDetected'
       AND json_valid(CAST(NEW.event_data AS TEXT))
       AND json_extract(CAST(NEW.event_data AS TEXT), '$.path_id') IS NOT NULL
       AND (path_id_event_id IS NULL OR path_id_event_id <= NEW.id)
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                          AND json_valid(CAST(e.event_data AS TEXT))
                          AND json_extract(CAST(e.event_data AS TEXT), '$.path_id') IS NOT NULL);
    UPDATE dbwarden_kept_facts
       SET corruption_type = json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type'),
           corruption_type_event_id = NEW.id
     WHERE corruption_id = NEW.aggregate_id
       AND NEW.aggregate_type = 'corruption' AND NEW.event_type = 'CorruptionDetected'
       AND json_valid(CAST(NEW.event_data AS TEXT))
       AND json_extract(CAST(NEW.event_data AS TEXT), '$.corruption_type') IS NOT NULL
       AND (corruption_type_event_id IS NULL OR corruption_type_event_id <= NEW.id)
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.event_type = 'CorruptionDetected' AND e.id > NEW.id
                          AND json_valid(CAST(e.event_data AS TEXT))
                          AND json_extract(CAST(e.event_data AS TEXT), '$.corruption_type') IS NOT NULL);
    -- The removed event was the first one: keep its time as the detection time.
    UPDATE dbwarden_kept_facts
       SET detected_at = NEW.created_at, detected_at_event_id = NEW.id
     WHERE corruption_id = NEW.aggregate_id
       AND NEW.aggregate_type = 'corruption'
       AND NEW.event_type NOT IN ('NotificationSent', 'NotificationFailed')
       AND (detected_at_event_id IS NULL OR detected_at_event_id >= NEW.id)
       AND NOT EXISTS (SELECT 1 FROM events e
                        WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = NEW.aggregate_id
                          AND e.id < NEW.id
                          AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'));

    SELECT RAISE(IGNORE);
END;

-- Delete (pruning, DELETE /api/corruptions/{id}): what the deleted event established
-- is kept while the aggregate lives on, then its row is rebuilt from the remaining
-- events and kept facts with the index, O(k log n) for k events.
CREATE TRIGGER dbwarden_summary_on_event_delete
AFTER DELETE ON events
WHEN OLD.aggregate_type = 'corruption'
 AND OLD.event_type NOT IN ('NotificationSent', 'NotificationFailed')
BEGIN
    INSERT INTO dbwarden_removed_event
        VALUES (OLD.id, OLD.aggregate_type, OLD.aggregate_id, OLD.event_type, OLD.event_data, OLD.created_at);
    DELETE FROM corruption_summary WHERE corruption_id = OLD.aggregate_id;
    INSERT INTO corruption_summary
        SELECT * FROM dbwarden_corruption_summary_recomputed
         WHERE corruption_id = OLD.aggregate_id;
    -- No lifecycle event left: the corruption is gone, and so is what was kept of it.
    DELETE FROM dbwarden_kept_facts
     WHERE corruption_id = OLD.aggregate_id
       AND NOT EXISTS (SELECT 1 FROM corruption_summary WHERE corruption_id = OLD.aggregate_id);
END;

-- Update: the old version is removed (what it established is kept, as for a delete)
-- and the new one stands in its place; both aggregates' rows are rebuilt.
CREATE TRIGGER dbwarden_summary_on_event_update
AFTER UPDATE ON events
WHEN OLD.aggregate_type = 'corruption' OR NEW.aggregate_type = 'corruption'
BEGIN
    INSERT INTO dbwarden_removed_event
        VALUES (OLD.id, OLD.aggregate_type, OLD.aggregate_id, OLD.event_type, OLD.event_data, OLD.created_at);
    DELETE FROM corruption_summary
     WHERE corruption_id IN (OLD.aggregate_id, NEW.aggregate_id);
    INSERT INTO corruption_summary
        SELECT * FROM dbwarden_corruption_summary_recomputed
         WHERE corruption_id IN (OLD.aggregate_id, NEW.aggregate_id);
    DELETE FROM dbwarden_kept_facts
     WHERE corruption_id IN (OLD.aggregate_id, NEW.aggregate_id)
       AND corruption_id NOT IN (SELECT corruption_id FROM corruption_summary);
END;

-- At adoption, Healarr's summary rows are stashed here before they are replaced (see
-- src/db/adopt.rs). A corruption whose CorruptionDetected Healarr had already pruned
-- keeps the detection facts Healarr's summary held, as kept facts older than every
-- event (id 0). Empty when nothing is being adopted.
CREATE TABLE IF NOT EXISTS dbwarden_adoption_summary (
    corruption_id   TEXT PRIMARY KEY,
    file_path,
    path_id,
    corruption_type,
    detected_at
);
INSERT INTO dbwarden_kept_facts (corruption_id, file_path, file_path_event_id, path_id,
                                 path_id_event_id, corruption_type, corruption_type_event_id,
                                 detected_at, detected_at_event_id)
SELECT s.corruption_id,
       s.file_path, CASE WHEN s.file_path IS NOT NULL THEN 0 END,
       s.path_id, CASE WHEN s.path_id IS NOT NULL THEN 0 END,
       s.corruption_type, CASE WHEN s.corruption_type IS NOT NULL THEN 0 END,
       s.detected_at, CASE WHEN s.detected_at IS NOT NULL THEN 0 END
  FROM dbwarden_adoption_summary s
 WHERE (s.file_path IS NOT NULL OR s.path_id IS NOT NULL OR s.corruption_type IS NOT NULL
        OR s.detected_at IS NOT NULL)
   AND EXISTS (SELECT 1 FROM events e
                WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = s.corruption_id
                  AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'))
   AND NOT EXISTS (SELECT 1 FROM events e
                    WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = s.corruption_id
                      AND e.event_type = 'CorruptionDetected');
DROP TABLE dbwarden_adoption_summary;

-- Rebuild every row under the new meaning.
DELETE FROM corruption_summary;
DELETE FROM corruption_state_counts;
INSERT INTO corruption_summary SELECT * FROM dbwarden_corruption_summary_recomputed;
