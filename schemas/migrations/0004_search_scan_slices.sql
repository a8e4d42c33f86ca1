-- A search of a large session reads hundreds of thousands of index entries, and one backend
-- reads them on one core. The session's scan index now also orders each session's faces by a
-- bucket of their photo (a hash of photo_id, 64 buckets), so a search can split the session
-- into slices of buckets and scan them side by side on several connections. All faces of a
-- photo share a bucket, so each photo is found by exactly one slice.
CREATE INDEX faces_session_scan_slices ON faces (session_id, model, (hashtext(photo_id) & 63))
    INCLUDE (photo_id, face_index, embedding_half);
DROP INDEX faces_session_scan;
