-- Model activations (PostgreSQL): every attempt to put a model package into service for a slot
-- (a camera's default model or a recipe), accepted or refused, with who asked and why it was
-- refused. The newest 'active' row of a slot is the model that slot must serve; every replica
-- polls this table and follows it. Rows are never changed: the history is the record.
CREATE TABLE model_activations (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot         TEXT   NOT NULL,
    package_path TEXT   NOT NULL,
    sha256       TEXT   NOT NULL,
    state        TEXT   NOT NULL CHECK (state IN ('active', 'refused')),
    reason       TEXT,
    actor        TEXT   NOT NULL,
    at_ms        BIGINT NOT NULL
);
CREATE INDEX model_activations_slot ON model_activations (slot, state, id);
CREATE FUNCTION model_activations_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'model_activations is append-only';
END;
$$;
CREATE TRIGGER model_activations_no_change BEFORE UPDATE OR DELETE ON model_activations
    FOR EACH ROW EXECUTE FUNCTION model_activations_append_only();
