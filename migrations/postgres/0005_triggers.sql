-- Trigger journal (PostgreSQL): every accepted trigger is written here before it is
-- acknowledged and answered exactly once (inspected, late, busy or error). A trigger still
-- pending at start-up was accepted by an instance that stopped before answering it; it is
-- answered "late".
CREATE TABLE triggers (
    id             TEXT    PRIMARY KEY,
    camera         TEXT    NOT NULL,
    part_id        TEXT,
    lot            TEXT,
    recipe         TEXT,
    received_at_ms BIGINT  NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'inspected', 'late', 'busy', 'error')),
    reason         TEXT,
    inspection_id  BIGINT  REFERENCES inspections (id),
    answered_at_ms BIGINT
);
CREATE INDEX triggers_pending ON triggers (state) WHERE state = 'pending';
