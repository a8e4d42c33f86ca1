-- pgvector stores a vector(512) (2 KiB) out of line in TOAST by default, so a per-session scan
-- read about 8 pages per face: 2.6 GiB of TOAST beside a 120 MiB heap at 1 M faces, and 53 ms
-- p50 at 10 k faces per session. Kept inline, the row fits its heap page and the same scan reads
-- one page per ~3 faces (measured 3-4x faster). Rows written before this keep their storage
-- until they are rewritten (reindexing a photo rewrites its faces).
ALTER TABLE faces ALTER COLUMN embedding SET STORAGE PLAIN;
