-- Image retention keeps the images that samples waiting for their upload name, and checks that
-- under the write lock for each image it deletes: from the image to its inspections by this
-- index, then to their samples by key.
CREATE INDEX inspections_image_ref ON inspections (image_ref) WHERE image_ref IS NOT NULL;
