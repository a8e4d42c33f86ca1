-- Photos and their faces. One row per (session, photo) makes indexing idempotent; the faces
-- primary key starts with session_id, so a per-session search is an exact scan of one b-tree
-- range (full recall, no approximate index needed at event-photography sizes).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE photos (
    session_id    text        NOT NULL,
    photo_id      text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('indexed')),
    face_count    integer     NOT NULL CHECK (face_count >= 0),
    faces_dropped integer     NOT NULL DEFAULT 0,
    model         text        NOT NULL,
    source        text        NOT NULL,
    event_id      text        NOT NULL,
    indexed_at    timestamptz NOT NULL DEFAULT now(),
    error         text,
    PRIMARY KEY (session_id, photo_id)
);

CREATE TABLE faces (
    session_id text        NOT NULL,
    photo_id   text        NOT NULL,
    face_index smallint    NOT NULL CHECK (face_index >= 0),
    model      text        NOT NULL,
    embedding  vector(512) NOT NULL,
    det_score  real        NOT NULL,
    bbox       real[]      NOT NULL CHECK (cardinality(bbox) = 4),
    PRIMARY KEY (session_id, photo_id, face_index),
    FOREIGN KEY (session_id, photo_id) REFERENCES photos (session_id, photo_id) ON DELETE CASCADE
);
