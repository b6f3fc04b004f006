-- Model activations (SQLite): every attempt to put a model package into service for a slot (a
-- camera's default model or a recipe), accepted or refused, with who asked and why it was
-- refused. The newest 'active' row of a slot is the model that slot must serve; services poll
-- this table and follow it. Rows are never changed: the history is the record.
CREATE TABLE model_activations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    slot         TEXT    NOT NULL,
    package_path TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('active', 'refused')),
    reason       TEXT,
    actor        TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL
);
CREATE INDEX model_activations_slot ON model_activations (slot, state, id);
CREATE TRIGGER model_activations_no_update BEFORE UPDATE ON model_activations
BEGIN
    SELECT RAISE(ABORT, 'model_activations is append-only');
END;
CREATE TRIGGER model_activations_no_delete BEFORE DELETE ON model_activations
BEGIN
    SELECT RAISE(ABORT, 'model_activations is append-only');
END;
