-- Rows dropped undelivered by `linesight outbox discard` (audited), counted per sink.
INSERT INTO outbox_counters (name, value) VALUES ('discarded_mqtt', 0), ('discarded_s3', 0);
