-- Quality records (PostgreSQL). Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE users (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        TEXT    NOT NULL UNIQUE,
    full_name       TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('operator', 'inspector', 'qa_approver', 'admin')),
    password_hash   TEXT    NOT NULL,
    failed_attempts BIGINT  NOT NULL DEFAULT 0,
    locked_until_ms BIGINT,
    created_at_ms   BIGINT  NOT NULL
);

CREATE TABLE inspections (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    part_id       TEXT    NOT NULL,
    lot           TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    recipe        TEXT    NOT NULL,
    camera        TEXT    NOT NULL,
    model_name    TEXT    NOT NULL,
    model_sha256  TEXT    NOT NULL,
    threshold     DOUBLE PRECISION    NOT NULL,
    score         DOUBLE PRECISION    NOT NULL,
    verdict       TEXT    NOT NULL CHECK (verdict IN ('good', 'defect')),
    regions_json  TEXT    NOT NULL,
    image_ref     TEXT,
    overlay_ref   TEXT,
    timings_json  TEXT    NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('automatic', 'manual')),
    defect_class  TEXT,
    at_ms         BIGINT  NOT NULL
);
CREATE INDEX inspections_lot ON inspections (lot, id);
CREATE INDEX inspections_part ON inspections (part_id);

CREATE TABLE tasks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    inspection_id   BIGINT  NOT NULL REFERENCES inspections (id),
    part_id         TEXT    NOT NULL,
    lot             TEXT    NOT NULL,
    opening_reason  TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    claimed_by      BIGINT  REFERENCES users (id),
    decided_by      BIGINT  REFERENCES users (id),
    decision_reason TEXT,
    version         BIGINT  NOT NULL DEFAULT 0,
    created_at_ms   BIGINT  NOT NULL,
    updated_at_ms   BIGINT  NOT NULL
);
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_part ON tasks (part_id);

CREATE TABLE lots (
    lot            TEXT PRIMARY KEY,
    released_at_ms BIGINT,
    released_by    BIGINT  REFERENCES users (id)
);

CREATE TABLE ncrs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lot           TEXT    NOT NULL,
    line          TEXT    NOT NULL,
    title         TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    disposition   TEXT,
    version       BIGINT  NOT NULL DEFAULT 0,
    created_by    TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);
CREATE INDEX ncrs_lot ON ncrs (lot, state);

CREATE TABLE signatures (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    signer_id      BIGINT  NOT NULL REFERENCES users (id),
    username       TEXT    NOT NULL,
    full_name      TEXT    NOT NULL,
    meaning        TEXT    NOT NULL,
    signed_at_ms   BIGINT  NOT NULL,
    record_type    TEXT    NOT NULL,
    record_id      TEXT    NOT NULL,
    record_hash    TEXT    NOT NULL,
    signature_hash TEXT    NOT NULL
);

CREATE TABLE ncr_transitions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ncr_id       BIGINT  NOT NULL REFERENCES ncrs (id),
    from_state   TEXT    NOT NULL,
    to_state     TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    disposition  TEXT,
    actor_id     BIGINT  NOT NULL REFERENCES users (id),
    reason       TEXT,
    -- A signature backs at most one transition: it cannot be reused.
    signature_id BIGINT  UNIQUE REFERENCES signatures (id),
    at_ms        BIGINT  NOT NULL
);
CREATE INDEX ncr_transitions_ncr ON ncr_transitions (ncr_id, id);

CREATE TABLE audit_log (
    seq       BIGINT  PRIMARY KEY,
    at_ms     BIGINT  NOT NULL,
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

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$;

CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

CREATE TABLE images (
    hash          TEXT    PRIMARY KEY,
    bytes         BIGINT  NOT NULL,
    stored_at_ms  BIGINT  NOT NULL,
    deleted_at_ms BIGINT
);
