-- `sample_manifest.uploaded` = 3: the sample's upload was dropped by `linesight outbox discard`.
-- Samples discarded before this state existed kept 0 ("waiting"), which held their images past
-- retention for good; a waiting sample always has its upload row in the outbox, so one without
-- it was discarded.
UPDATE sample_manifest SET uploaded = 3
WHERE uploaded = 0
  AND NOT EXISTS (
      SELECT 1 FROM outbox o
      WHERE o.sink = 's3' AND o.ordering_key = 'sample:' || CAST(sample_manifest.inspection_id AS TEXT)
  );
