-- The event store in Healarr's layout. Everything is IF NOT EXISTS so an adopted
-- Healarr database keeps its own table and indexes untouched.

CREATE TABLE IF NOT EXISTS events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    event_data     JSON NOT NULL,
    event_version  INTEGER NOT NULL DEFAULT 1,
    created_at     TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    user_id        TEXT
);

-- (aggregate_type, aggregate_id) and (aggregate_id, event_type) carry the rowid, so
-- the summary triggers can seek "events of this aggregate above/below id N" in O(log n).
CREATE INDEX IF NOT EXISTS idx_events_aggregate ON events(aggregate_type, aggregate_id);
CREATE INDEX IF NOT EXISTS idx_events_type ON events(event_type);
CREATE INDEX IF NOT EXISTS idx_events_created_at ON events(created_at);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_event_type ON events(aggregate_id, event_type);

CREATE TABLE IF NOT EXISTS scan_paths (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    local_path TEXT NOT NULL UNIQUE,
    arr_path   TEXT,
    enabled    BOOLEAN NOT NULL DEFAULT 1,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- Client-supplied event ids (UUIDs) for idempotent appends. Kept beside the events
-- table so Healarr's layout stays exactly as Healarr created it.
CREATE TABLE IF NOT EXISTS dbwarden_event_keys (
    event_key TEXT PRIMARY KEY,
    event_id  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_dbwarden_event_keys_event ON dbwarden_event_keys(event_id);

CREATE TRIGGER IF NOT EXISTS dbwarden_event_keys_on_event_delete
AFTER DELETE ON events
BEGIN
    DELETE FROM dbwarden_event_keys WHERE event_id = OLD.id;
END;
