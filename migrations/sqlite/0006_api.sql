-- HTTP API (SQLite): sign-in sessions of the web UI, bearer tokens of machines and the MES,
-- lot holds and NCR attachments.
--
-- Sessions and tokens are stored as the SHA-256 of their secret only: a copy of the database
-- does not let anyone act as a user.
CREATE TABLE api_sessions (
    secret_sha256   TEXT    PRIMARY KEY,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    csrf_token      TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL
);
CREATE INDEX api_sessions_user ON api_sessions (user_id);

CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    secret_sha256   TEXT    NOT NULL UNIQUE,
    user_id         INTEGER NOT NULL REFERENCES users (id),
    created_by      TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    revoked_at_ms   INTEGER,
    last_used_ms    INTEGER
);

ALTER TABLE lots ADD COLUMN held_at_ms INTEGER;
ALTER TABLE lots ADD COLUMN held_by INTEGER REFERENCES users (id);
ALTER TABLE lots ADD COLUMN hold_reason TEXT;

CREATE TABLE ncr_attachments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    ncr_id          INTEGER NOT NULL REFERENCES ncrs (id),
    name            TEXT    NOT NULL,
    media_type      TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    sha256          TEXT    NOT NULL,
    added_by        TEXT    NOT NULL,
    added_at_ms     INTEGER NOT NULL
);
CREATE INDEX ncr_attachments_ncr ON ncr_attachments (ncr_id, id);

CREATE INDEX inspections_camera ON inspections (camera, id);
CREATE INDEX inspections_at ON inspections (at_ms, id);
