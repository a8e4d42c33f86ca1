"""The face store: photos and their face embeddings in PostgreSQL with pgvector.

Every query names one session and one model: embeddings of different models live in
different spaces, and a search must never see another session's photos.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import numpy as np
from pgvector import HalfVector
from pgvector.asyncpg import register_vector

from schemas.errors import StorageUnavailable
from storage.migrations import apply_migrations

log = logging.getLogger(__name__)

BoundingBox = tuple[float, float, float, float]

# How far the half-precision similarity of unit vectors can stray from the float32 one:
# rounding each component to half precision moves a unit vector by at most 2^-11 (4.9e-4),
# the selfie's and the face's together move their inner product by under 1e-3, and summing
# 512 products in float32 adds about 3e-5. Five times that bound is still narrow enough to
# let through only a handful of faces that the exact rescoring then drops.
HALF_PRECISION_MARGIN = 0.005

# The scan index orders a session's faces by `hashtext(photo_id) & 63`: a search splits these
# buckets into slices and scans each on a connection of its own (schemas/migrations/0004).
SCAN_BUCKETS = 64

# Errors that mean "the database is not there right now", as opposed to "this query is wrong".
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # What asyncpg raises when the pool hands out a connection the server has closed (a
    # failover, idle_session_timeout, pg_terminate_backend) before it noticed the close.
    asyncpg.InternalClientError,
)


@dataclass(frozen=True)
class StoredFace:
    bbox: BoundingBox
    det_score: float
    embedding: np.ndarray


@dataclass(frozen=True)
class IndexedPhoto:
    session_id: str
    photo_id: str
    event_id: str
    source: str
    model: str
    faces: Sequence[StoredFace]
    faces_dropped: int = 0


@dataclass(frozen=True)
class PhotoRecord:
    """What the store already knows of a photo."""

    session_id: str
    photo_id: str
    event_id: str
    source: str
    model: str
    face_count: int
    faces_dropped: int
    faces: list[tuple[BoundingBox, float]]


@dataclass(frozen=True)
class SessionView:
    photo_count: int
    known: dict[str, PhotoRecord]


@dataclass(frozen=True)
class Match:
    photo_id: str
    similarity: float
    bbox: BoundingBox


@asynccontextmanager
async def unavailable_as_retriable(action: str) -> AsyncIterator[None]:
    try:
        yield
    except _UNAVAILABLE as error:
        raise StorageUnavailable(
            f"face store unavailable while {action}: {type(error).__name__}: {error}"
        ) from error


def scan_slices(count: int) -> list[tuple[int, int]]:
    """The bucket ranges (first, last) of `count` slices of nearly equal size."""
    if not 1 <= count <= SCAN_BUCKETS:
        raise ValueError(f"a search is split into 1 to {SCAN_BUCKETS} scans, not {count}")
    edges = [SCAN_BUCKETS * k // count for k in range(count + 1)]
    return [(edges[k], edges[k + 1] - 1) for k in range(count)]


class FaceStore:
    def __init__(self, pool: asyncpg.Pool, *, parallel_scans: int = 2) -> None:
        self._pool = pool
        self._slices = scan_slices(parallel_scans)

    @classmethod
    async def open(
        cls, dsn: str, *, parallel_scans: int = 2, command_timeout_s: float = 15.0
    ) -> "FaceStore":
        """Apply pending migrations, then open a connection pool.

        The pool holds a connection for each of a search's parallel scans and two more, so
        that the index agent's reads and its commit never wait for a search. A statement that
        gets no answer within `command_timeout_s` fails as unavailable, to be retried, rather
        than holding its agent forever on a database that hangs.
        """
        async with unavailable_as_retriable("connecting"):
            connection = await asyncpg.connect(dsn, timeout=10)
            try:
                await apply_migrations(connection)
            finally:
                await connection.close()
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=parallel_scans + 2,
                init=register_vector,
                timeout=10,
                command_timeout=command_timeout_s,
            )
        return cls(pool, parallel_scans=parallel_scans)

    async def close(self) -> None:
        await self._pool.close()

    async def embedding_dimension(self) -> int:
        """The dimension of the faces.embedding column, as the migrations created it."""
        async with unavailable_as_retriable("reading the schema"):
            dimension: int = await self._pool.fetchval(
                """SELECT atttypmod FROM pg_attribute
                   WHERE attrelid = 'faces'::regclass AND attname = 'embedding'"""
            )
        return dimension

    async def known_photos(
        self, session_id: str, photo_ids: Sequence[str]
    ) -> dict[str, PhotoRecord]:
        return (await self.session_view(session_id, photo_ids)).known

    async def session_view(self, session_id: str, photo_ids: Sequence[str]) -> "SessionView":
        """How many photos the session holds and what it holds of these, in one statement:
        both are read from the same snapshot, whatever commits meanwhile."""
        async with unavailable_as_retriable("reading photos"):
            rows = await self._pool.fetch(
                """SELECT (SELECT count(*) FROM photos WHERE session_id = $1) AS photo_count,
                          known.*
                   FROM (SELECT 1) AS one
                   LEFT JOIN (
                       SELECT p.photo_id, p.event_id, p.source, p.model, p.face_count,
                              p.faces_dropped,
                              coalesce(array_agg(f.bbox || f.det_score ORDER BY f.face_index)
                                       FILTER (WHERE f.face_index IS NOT NULL), '{}') AS faces
                       FROM photos p
                       LEFT JOIN faces f USING (session_id, photo_id)
                       WHERE p.session_id = $1 AND p.photo_id = ANY($2::text[])
                       GROUP BY p.photo_id, p.event_id, p.source, p.model, p.face_count,
                                p.faces_dropped
                   ) AS known ON true""",
                session_id,
                list(photo_ids),
            )
        known = {
            row["photo_id"]: PhotoRecord(
                session_id=session_id,
                photo_id=row["photo_id"],
                event_id=row["event_id"],
                source=row["source"],
                model=row["model"],
                face_count=row["face_count"],
                faces_dropped=row["faces_dropped"],
                faces=[(tuple(face[:4]), float(face[4])) for face in row["faces"]],
            )
            for row in rows
            if row["photo_id"] is not None
        }
        return SessionView(photo_count=rows[0]["photo_count"], known=known)

    async def photo_count(self, session_id: str) -> int:
        async with unavailable_as_retriable("counting photos"):
            count: int = await self._pool.fetchval(
                "SELECT count(*) FROM photos WHERE session_id = $1", session_id
            )
        return count

    async def save(self, photos: Sequence[IndexedPhoto]) -> None:
        """Store a batch of photos in one transaction, replacing any faces they had before."""
        if not photos:
            return
        async with (
            unavailable_as_retriable("saving a batch"),
            self._pool.acquire() as connection,
            connection.transaction(),
        ):
            await connection.executemany(
                "DELETE FROM faces WHERE session_id = $1 AND photo_id = $2",
                [(photo.session_id, photo.photo_id) for photo in photos],
            )
            await connection.executemany(
                """INSERT INTO photos (session_id, photo_id, status, face_count, faces_dropped,
                                           model, source, event_id, indexed_at, error)
                       VALUES ($1, $2, 'indexed', $3, $4, $5, $6, $7, now(), NULL)
                       ON CONFLICT (session_id, photo_id) DO UPDATE SET
                           status = 'indexed', face_count = excluded.face_count,
                           faces_dropped = excluded.faces_dropped, model = excluded.model,
                           source = excluded.source, event_id = excluded.event_id,
                           indexed_at = excluded.indexed_at, error = NULL""",
                [
                    (
                        photo.session_id,
                        photo.photo_id,
                        len(photo.faces),
                        photo.faces_dropped,
                        photo.model,
                        photo.source,
                        photo.event_id,
                    )
                    for photo in photos
                ],
            )
            face_rows = [
                (
                    photo.session_id,
                    photo.photo_id,
                    index,
                    photo.model,
                    face.embedding,
                    face.det_score,
                    list(face.bbox),
                )
                for photo in photos
                for index, face in enumerate(photo.faces)
            ]
            if face_rows:
                await connection.executemany(
                    """INSERT INTO faces (session_id, photo_id, face_index, model, embedding,
                                              det_score, bbox)
                           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    face_rows,
                )

    async def search(
        self, session_id: str, model: str, embedding: np.ndarray, threshold: float, limit: int
    ) -> list[Match]:
        """The session's photos whose best face reaches the threshold, best first.

        Exact: every face of the session is compared. The session is split into slices of
        photo buckets, scanned side by side, each on its own connection; a photo's faces all
        lie in one slice, so the best `limit` photos of every slice together hold the best
        `limit` of the session. Each slice runs in its own snapshot, so of a batch that
        commits during a search, the photos in one slice may be found and those in another
        not yet; each photo is found whole or not at all, and the next search finds them all.
        """
        async with unavailable_as_retriable("searching"):
            found = await asyncio.gather(
                *(
                    self._search_slice(session_id, model, embedding, threshold, limit, buckets)
                    for buckets in self._slices
                ),
                return_exceptions=True,  # every scan ends and gives its connection back
            )
            for outcome in found:
                if isinstance(outcome, BaseException):
                    raise outcome
        matches = [match for outcome in found if isinstance(outcome, list) for match in outcome]
        # The same order as the SQL's: photo ids compared by code point, as COLLATE "C" does.
        matches.sort(key=lambda match: (-match.similarity, match.photo_id))
        return matches[:limit]

    async def _search_slice(
        self,
        session_id: str,
        model: str,
        embedding: np.ndarray,
        threshold: float,
        limit: int,
        buckets: tuple[int, int],
    ) -> list[Match]:
        """The best photos of one slice of the session's buckets.

        Embeddings are stored unit-length, so the cosine similarity is the inner product, the
        negated `<#>`. The scan reads only the scan index, which carries each face's
        half-precision embedding, and keeps the faces within HALF_PRECISION_MARGIN under the
        threshold; only those are looked up in the table and compared again with their float32
        embedding before the threshold applies. Faces under it are dropped before the
        per-photo de-duplication, so only the matches are sorted. Each OFFSET 0 keeps the
        planner from merging a step into the one before it, which would read float32
        embeddings during the scan or compute them twice.
        """
        first, last = buckets
        rows = await self._pool.fetch(
            """SELECT photo_id, similarity, bbox FROM (
                   SELECT DISTINCT ON (photo_id) photo_id, similarity, bbox
                   FROM (
                       SELECT f.photo_id, f.face_index, f.bbox,
                              -(f.embedding <#> $3) AS similarity
                       FROM (
                           SELECT photo_id, face_index
                           FROM faces
                           WHERE session_id = $1 AND model = $2
                             AND (hashtext(photo_id) & 63) BETWEEN $8 AND $9
                             AND -(embedding_half <#> $6) >= $7
                           OFFSET 0
                       ) near
                       JOIN faces f ON f.session_id = $1
                                   AND f.photo_id = near.photo_id
                                   AND f.face_index = near.face_index
                       OFFSET 0
                   ) scored
                   WHERE similarity >= $4
                   ORDER BY photo_id, similarity DESC, face_index
               ) best
               ORDER BY similarity DESC, photo_id COLLATE "C"
               LIMIT $5""",
            session_id,
            model,
            embedding,
            threshold,
            limit,
            HalfVector(embedding),
            threshold - HALF_PRECISION_MARGIN,
            first,
            last,
        )
        return [
            Match(row["photo_id"], float(row["similarity"]), tuple(row["bbox"])) for row in rows
        ]

    async def embeddings(self, session_id: str, photo_id: str) -> np.ndarray:
        """The stored embeddings of one photo, in face order."""
        async with unavailable_as_retriable("reading embeddings"):
            rows = await self._pool.fetch(
                "SELECT embedding FROM faces WHERE session_id = $1 AND photo_id = $2 ORDER BY face_index",
                session_id,
                photo_id,
            )
        return np.array([np.asarray(row["embedding"].to_numpy()) for row in rows], dtype=np.float32)

    async def face_count(self, session_id: str, photo_id: str | None = None) -> int:
        async with unavailable_as_retriable("counting faces"):
            count: int = await self._pool.fetchval(
                "SELECT count(*) FROM faces WHERE session_id = $1 AND ($2::text IS NULL OR photo_id = $2)",
                session_id,
                photo_id,
            )
        return count
