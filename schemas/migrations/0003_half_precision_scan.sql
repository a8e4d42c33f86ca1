-- A search compares the selfie with every face of its session, so what it reads per face sets
-- its cost. Each face now also keeps its embedding in half precision (1 KiB, computed by the
-- database from the float32 one), and an index on (session, model) carries those copies, so a
-- search reads its session's faces packed together, however the uploads of different sessions
-- interleaved in the table, and never visits the table for a face that cannot match. The
-- float32 embedding stays in the row: a search reads it for the few faces within a small
-- margin of its threshold and rescores them exactly, so the answer is a float32 scan's.
ALTER TABLE faces
    ADD COLUMN embedding_half halfvec GENERATED ALWAYS AS (embedding::halfvec) STORED;
ALTER TABLE faces ALTER COLUMN embedding_half SET STORAGE PLAIN;
CREATE INDEX faces_session_scan ON faces (session_id, model)
    INCLUDE (photo_id, face_index, embedding_half);
