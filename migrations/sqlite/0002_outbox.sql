-- Durable outbox (SQLite). A row is written in the same transaction as the record it belongs
-- to and deleted only after the peer confirmed it (MQTT PUBACK, S3 2xx). `id` is the delivery
-- order; `event_id` is the stable id consumers de-duplicate on.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    sink          TEXT    NOT NULL CHECK (sink IN ('mqtt', 's3')),
    kind          TEXT    NOT NULL,
    ordering_key  TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    bytes         INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_sink ON outbox (sink, id);

-- Running totals kept in the appending transaction, so the size check never scans the queue.
CREATE TABLE outbox_counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO outbox_counters (name, value) VALUES
    ('pending_bytes', 0), ('events_dropped', 0), ('samples_refused', 0), ('full_since_ms', 0),
    ('delivered_mqtt', 0), ('delivered_s3', 0);

-- Samples taken per UTC day and class (daily quotas).
CREATE TABLE sample_quota (
    day   TEXT    NOT NULL,
    class TEXT    NOT NULL,
    taken INTEGER NOT NULL,
    PRIMARY KEY (day, class)
);

-- One Ground Truth manifest line and metadata document per sampled inspection; `uploaded`
-- once its image is in the bucket.
CREATE TABLE sample_manifest (
    inspection_id INTEGER PRIMARY KEY,
    day           TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    metadata      TEXT    NOT NULL,
    uploaded      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sample_manifest_day ON sample_manifest (day, inspection_id);

-- Days whose manifest object must be written again (`version` grows with every change).
CREATE TABLE sample_days (
    day       TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    written   INTEGER NOT NULL DEFAULT 0
);
