-- A record's audit history by its entity and id, in order: the NCR and task history pages,
-- and `audit verify`, which compares each page of tasks and NCRs with their entries.
CREATE INDEX audit_log_entity ON audit_log (entity, entity_id, seq);
