-- Samples queued for upload and not yet in the bucket. Image retention keeps the images these
-- samples name until they are uploaded, and checks that under the write lock for each image it
-- deletes: the index keeps that check to the pending samples instead of every sample ever
-- taken.
CREATE INDEX sample_manifest_pending ON sample_manifest (inspection_id) WHERE uploaded = 0;
