-- Quality records (SQLite). Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE users (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    username        TEXT    NOT NULL UNIQUE,
    full_name       TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('operator', 'inspector', 'qa_approver', 'admin')),
    password_hash   TEXT    NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until_ms INTEGER,
    created_at_ms   INTEGER NOT NULL
);

CREATE TABLE inspections (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    part_id       TEXT    NOT NULL,
    lot           TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    recipe        TEXT    NOT NULL,
    camera        TEXT    NOT NULL,
    model_name    TEXT    NOT NULL,
    model_sha256  TEXT    NOT NULL,
    threshold     REAL    NOT NULL,
    score         REAL    NOT NULL,
    verdict       TEXT    NOT NULL CHECK (verdict IN ('good', 'defect')),
    regions_json  TEXT    NOT NULL,
    image_ref     TEXT,
    overlay_ref   TEXT,
    timings_json  TEXT    NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('automatic', 'manual')),
    defect_class  TEXT,
    at_ms         INTEGER NOT NULL
);
CREATE INDEX inspections_lot ON inspections (lot, id);
CREATE INDEX inspections_part ON inspections (part_id);

CREATE TABLE tasks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    inspection_id   INTEGER NOT NULL REFERENCES inspections (id),
    part_id         TEXT    NOT NULL,
    lot             TEXT    NOT NULL,
    opening_reason  TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    claimed_by      INTEGER REFERENCES users (id),
    decided_by      INTEGER REFERENCES users (id),
    decision_reason TEXT,
    version         INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_part ON tasks (part_id);

CREATE TABLE lots (
    lot            TEXT PRIMARY KEY,
    released_at_ms INTEGER,
    released_by    INTEGER REFERENCES users (id)
);

CREATE TABLE ncrs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    lot           TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    title         TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    disposition   TEXT,
    version       INTEGER NOT NULL DEFAULT 0,
    created_by    TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX ncrs_lot ON ncrs (lot, state);

CREATE TABLE signatures (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    signer_id      INTEGER NOT NULL REFERENCES users (id),
    username       TEXT    NOT NULL,
    full_name      TEXT    NOT NULL,
    meaning        TEXT    NOT NULL,
    signed_at_ms   INTEGER NOT NULL,
    record_type    TEXT    NOT NULL,
    record_id      TEXT    NOT NULL,
    record_hash    TEXT    NOT NULL,
    signature_hash TEXT    NOT NULL
);

CREATE TABLE ncr_transitions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ncr_id       INTEGER NOT NULL REFERENCES ncrs (id),
    from_state   TEXT    NOT NULL,
    to_state     TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    disposition  TEXT,
    actor_id     INTEGER NOT NULL REFERENCES users (id),
    reason       TEXT,
    -- A signature backs at most one transition: it cannot be reused.
    signature_id INTEGER UNIQUE REFERENCES signatures (id),
    at_ms        INTEGER NOT NULL
);
CREATE INDEX ncr_transitions_ncr ON ncr_transitions (ncr_id, id);

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    at_ms     INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    entity    TEXT    NOT NULL,
    entity_id TEXT    NOT NULL,
    old_value TEXT,
    new_value TEXT,
    reason    TEXT,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

CREATE TABLE images (
    hash          TEXT    PRIMARY KEY,
    bytes         INTEGER NOT NULL,
    stored_at_ms  INTEGER NOT NULL,
    deleted_at_ms INTEGER
);
