"""Database search latency per session: `FaceStore.search` at 1k, 10k and 100k faces per session.

A fresh embedded PostgreSQL (under bench/.cache/search-db, the product's migrations applied by
`FaceStore.open`) is filled with 1M faces overall (`--quick`: 100k): three measured sessions of
1k, 10k and 100k faces (`--quick`: 1k and 10k) and filler sessions of 1000 faces each. Embeddings
are random unit vectors (512 float32, as ArcFace gives), 5 faces per photo, every face with its
`photos` row (the foreign key). Photos are written in shuffled order across sessions, as uploads
of many events interleave in production, so one session's rows are spread over the heap rather
than packed together (the pessimistic, realistic layout). The fill uses binary COPY in batches
with `synchronous_commit=off`, a larger `maintenance_work_mem` and foreign-key triggers off
(`session_replication_role=replica`; every face has its photo by construction), then
`VACUUM ANALYZE`. None of that applies to the measured queries.

Each query is a real `FaceStore.search` (threshold 0.30, limit 50, the product's defaults) with a
stored face of the session plus noise as the selfie, so every answer has a match. A search splits
its session into `SEARCH_PARALLEL_SCANS` slices scanned side by side (`--scans`); every query runs
that way and in a single scan, the two taking turns to go first, so the gain is measured in the
same run. Reported per session size and scan count: the first (cold) query, then p50 and p99 over
the measured queries after a warm-up, and the plan of the product's own SQL for one slice
(captured from the pool, then run under `EXPLAIN (ANALYZE, BUFFERS)`): which scan, rows, buffers,
sort method, execution time.

The search compares every face of the session: it scans half-precision copies of the
embeddings in an index and rescores in float32 the faces within a small margin of the
threshold. Every measured answer is checked, untimed, against an exact float32 search of the
same session in numpy: `recall` is the share of the exact answers' photos found, and
`max |score error|` the largest difference between a returned similarity and the exact one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.photos import CACHE
from bench.stack import percentile, table
from streams.settings import Settings

DIMENSION = 512
FACES_PER_PHOTO = 5
FILLER_SESSION_FACES = 1000
MODEL = "buffalo_s"
THRESHOLD = 0.30
LIMIT = 50
BATCH_PHOTOS = 4000  # photos per COPY batch (20k faces, ~40 MB of vectors)
DB_DIR = CACHE / "search-db"


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def layout(targets: dict[str, int], total: int) -> list[tuple[str, int]]:
    """(session_id, faces) for every session: the measured ones and the fillers."""
    sessions = list(targets.items())
    left = total - sum(targets.values())
    index = 0
    while left > 0:
        size = min(FILLER_SESSION_FACES, left)
        sessions.append((f"filler-{index:05d}", size))
        left -= size
        index += 1
    return sessions


async def fill(
    connection: Any, sessions: list[tuple[str, int]], rng: np.random.Generator
) -> dict[str, SessionFaces]:
    """Write every session's photos and faces; return those of the measured sessions."""
    photos = [
        (session, photo, min(FACES_PER_PHOTO, faces - photo * FACES_PER_PHOTO))
        for session, faces in sessions
        for photo in range((faces + FACES_PER_PHOTO - 1) // FACES_PER_PHOTO)
    ]
    order = rng.permutation(len(photos))
    measured = {session for session, _ in sessions if not session.startswith("filler-")}
    kept: dict[str, list[tuple[str, np.ndarray]]] = {session: [] for session in measured}
    total_faces = sum(faces for _, faces in sessions)
    written = 0
    started = time.perf_counter()
    last_print = 0.0
    await connection.execute("SET synchronous_commit = off")
    await connection.execute("SET session_replication_role = replica")
    for first in range(0, len(order), BATCH_PHOTOS):
        batch = [photos[i] for i in order[first : first + BATCH_PHOTOS]]
        count = sum(faces for _, _, faces in batch)
        vectors = unit_vectors(rng, count)
        photo_rows = [
            (
                session,
                f"p{photo:06d}",
                "indexed",
                faces,
                0,
                MODEL,
                f"bench/{session}/{photo}",
                f"e-{session}-{photo}",
            )
            for session, photo, faces in batch
        ]
        face_rows = []
        row = 0
        for session, photo, faces in batch:
            for face in range(faces):
                vector = vectors[row]
                row += 1
                face_rows.append(
                    (session, f"p{photo:06d}", face, MODEL, vector, 0.9, [10.0, 10.0, 90.0, 110.0])
                )
                if session in kept:
                    kept[session].append((f"p{photo:06d}", vector.copy()))
        async with connection.transaction():
            await connection.copy_records_to_table(
                "photos",
                records=photo_rows,
                columns=[
                    "session_id",
                    "photo_id",
                    "status",
                    "face_count",
                    "faces_dropped",
                    "model",
                    "source",
                    "event_id",
                ],
            )
            await connection.copy_records_to_table(
                "faces",
                records=face_rows,
                columns=[
                    "session_id",
                    "photo_id",
                    "face_index",
                    "model",
                    "embedding",
                    "det_score",
                    "bbox",
                ],
            )
        written += count
        now = time.perf_counter() - started
        if now - last_print > 10 or written == total_faces:
            last_print = now
            print(
                f"    {written:>9,} / {total_faces:,} faces  {now:6.1f} s  "
                f"({written / now:,.0f} faces/s)",
                flush=True,
            )
    await connection.execute("RESET session_replication_role")
    return {
        session: SessionFaces([photo for photo, _ in faces], np.stack([v for _, v in faces]))
        for session, faces in kept.items()
    }


@dataclass(frozen=True)
class SessionFaces:
    photo_ids: list[str]
    vectors: np.ndarray  # float32, one row per face, as stored

    def exact_answer(self, query: np.ndarray) -> list[tuple[str, float]]:
        """What an exact float32 search returns: per photo its best face at or above the
        threshold, best first, ties by photo id, at most LIMIT."""
        scores = self.vectors @ query
        best: dict[str, float] = {}
        for index in np.flatnonzero(scores >= THRESHOLD):
            photo, score = self.photo_ids[index], float(scores[index])
            best[photo] = max(score, best.get(photo, -2.0))
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:LIMIT]


def plan_summary(plan: dict[str, Any]) -> list[str]:
    lines: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        name = node["Node Type"]
        if node.get("Index Name"):
            name += f" using {node['Index Name']}"
        if node.get("Relation Name"):
            name += f" on {node['Relation Name']}"
        details = [f"rows={node.get('Actual Rows')}", f"{node.get('Actual Total Time', 0):.1f} ms"]
        hit, read = node.get("Shared Hit Blocks", 0), node.get("Shared Read Blocks", 0)
        if hit or read:
            details.append(f"buffers hit={hit} read={read}")
        if node.get("Sort Method"):
            details.append(
                f"sort={node['Sort Method']} {node.get('Sort Space Used')} kB "
                f"{node.get('Sort Space Type', '')}".rstrip()
            )
        if node.get("Workers Launched"):
            details.append(f"workers={node['Workers Launched']}")
        lines.append(f"{'  ' * depth}{name}  ({', '.join(details)})")
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(plan["Plan"], 0)
    lines.append(f"Execution Time: {plan['Execution Time']:.1f} ms")
    return lines


async def measure(arguments: argparse.Namespace) -> None:
    import asyncpg
    from pgvector.asyncpg import register_vector

    from storage.face_store import FaceStore
    from streams.embedded import EmbeddedDatabase

    quick = arguments.quick
    total = 100_000 if quick else 1_000_000
    targets = (
        {"s-1k": 1_000, "s-10k": 10_000}
        if quick
        else {"s-1k": 1_000, "s-10k": 10_000, "s-100k": 100_000}
    )
    queries = arguments.queries or (100 if quick else 200)
    rng = np.random.default_rng(20240611)

    shutil.rmtree(DB_DIR, ignore_errors=True)
    database = EmbeddedDatabase.start(DB_DIR.resolve())
    try:
        url = database.url
        await (await FaceStore.open(url)).close()  # opening applies the product's migrations
        connection = await asyncpg.connect(url)
        await register_vector(connection)
        settings = {
            name: await connection.fetchval(f"SHOW {name}")
            for name in (
                "server_version",
                "shared_buffers",
                "work_mem",
                "max_parallel_workers_per_gather",
            )
        }
        if arguments.storage != "default":
            # An experiment, not the product's schema: keep the 2 KB vectors in the heap row.
            await connection.execute(
                f"ALTER TABLE faces ALTER COLUMN embedding SET STORAGE {arguments.storage.upper()}"
            )
        storage = await connection.fetchval(
            """SELECT attstorage::text FROM pg_attribute
               WHERE attrelid = 'faces'::regclass AND attname = 'embedding'"""
        )
        await connection.execute("SET maintenance_work_mem = '1GB'")
        print(f"... filling {total:,} faces ({len(layout(targets, total))} sessions)", flush=True)
        fill_started = time.perf_counter()
        stored = await fill(connection, layout(targets, total), rng)
        fill_s = time.perf_counter() - fill_started
        vacuum_started = time.perf_counter()
        await connection.execute("VACUUM ANALYZE photos")
        await connection.execute("VACUUM ANALYZE faces")
        vacuum_s = time.perf_counter() - vacuum_started
        sizes = await connection.fetchrow(
            """SELECT pg_relation_size('faces') AS heap,
                      coalesce(pg_relation_size(reltoastrelid), 0) AS toast,
                      pg_indexes_size('faces') AS indexes
               FROM pg_class WHERE relname = 'faces'"""
        )
        await connection.close()
        print(f"    fill {fill_s:.0f} s, vacuum analyze {vacuum_s:.0f} s", flush=True)

        captured: list[tuple[str, tuple[Any, ...]]] = []

        def log_query(record: Any) -> None:
            if "DISTINCT ON (photo_id)" in record.query and not record.query.startswith("EXPLAIN"):
                captured.append((record.query, tuple(record.args)))

        async def init(conn: Any) -> None:
            await register_vector(conn)
            conn.add_query_logger(log_query)

        scans = sorted({1, arguments.scans})
        pool = await asyncpg.create_pool(url, min_size=1, max_size=max(scans), init=init)
        stores = {count: FaceStore(pool, parallel_scans=count) for count in scans}
        rows = []
        plans: dict[str, list[str]] = {}
        try:
            for session, faces in targets.items():
                session_faces = stored[session]

                def selfie(i: int, vectors: np.ndarray = session_faces.vectors) -> np.ndarray:
                    face = vectors[(i * 7919) % len(vectors)]
                    noisy = face + rng.normal(0, 0.02, DIMENSION).astype(np.float32)
                    return (noisy / np.linalg.norm(noisy)).astype(np.float32)

                started = time.perf_counter()
                first = await stores[scans[-1]].search(session, MODEL, selfie(0), THRESHOLD, LIMIT)
                cold_ms = (time.perf_counter() - started) * 1000
                assert first, "the selfie is a stored face: it must match"
                for i in range(1, 6):
                    for store in stores.values():
                        await store.search(session, MODEL, selfie(i), THRESHOLD, LIMIT)
                times: dict[int, list[float]] = {count: [] for count in scans}
                answers = []
                for i in range(queries):
                    query = selfie(10 + i)
                    # Side by side: each query once split into the default number of scans and
                    # once in one scan, the two taking turns to go first.
                    for count in scans if i % 2 else scans[::-1]:
                        started = time.perf_counter()
                        found = await stores[count].search(session, MODEL, query, THRESHOLD, LIMIT)
                        times[count].append((time.perf_counter() - started) * 1000)
                        answers.append((query, found))
                # Afterwards, so that numpy's threads take no CPU from a measured query: every
                # answer against an exact float32 search in numpy.
                expected_total = found_total = 0
                worst_score_error = 0.0
                for query, found in answers:
                    exact = dict(session_faces.exact_answer(query))
                    expected_total += len(exact)
                    found_total += sum(1 for match in found if match.photo_id in exact)
                    for match in found:
                        error = abs(match.similarity - exact.get(match.photo_id, 9.0))
                        worst_score_error = max(worst_score_error, error)
                for count in scans:
                    rows.append(
                        [
                            f"{faces:,}",
                            f"{faces // FACES_PER_PHOTO:,}",
                            count,
                            queries,
                            f"{cold_ms:.1f}" if count == scans[-1] else "",
                            f"{percentile(times[count], 0.5):.1f}",
                            f"{percentile(times[count], 0.99):.1f}",
                            f"{1000 * len(times[count]) / sum(times[count]):.1f}",
                            f"{found_total / expected_total:.3f}",
                            f"{worst_score_error:.1e}",
                        ]
                    )
                print(
                    f"    {session}: p50 "
                    + ", ".join(f"{percentile(times[c], 0.5):.1f} ms in {c} scans" for c in scans),
                    flush=True,
                )
                sql, args = captured[-1]  # the last measured query's last slice, as sent
                async with pool.acquire() as conn:
                    explained = await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *args
                    )
                plans[session] = plan_summary(json.loads(explained)[0])
        finally:
            await pool.close()

        print()
        print(
            f"search latency, {total:,} faces in the table, threshold {THRESHOLD}, "
            f"limit {LIMIT}; recall against an exact float32 search in numpy"
        )
        print(
            table(
                rows,
                [
                    "faces/session",
                    "photos",
                    "scans",
                    "queries",
                    "first ms",
                    "p50 ms",
                    "p99 ms",
                    "queries/s",
                    "recall",
                    "max |score error|",
                ],
            )
        )
        print(
            f"\nPostgreSQL {settings['server_version']}, shared_buffers={settings['shared_buffers']}, "
            f"work_mem={settings['work_mem']}, max_parallel_workers_per_gather="
            f"{settings['max_parallel_workers_per_gather']}; embedding storage='{storage}' (e: external = TOASTed out of line, p: plain = in the row)"
            f"\nfaces table: heap {sizes['heap'] / 2**20:,.0f} MiB, toast {sizes['toast'] / 2**20:,.0f} MiB,"
            f" indexes {sizes['indexes'] / 2**20:,.0f} MiB; fill {fill_s:.0f} s "
            f"({total / fill_s:,.0f} faces/s), vacuum analyze {vacuum_s:.0f} s"
        )
        for session, lines in plans.items():
            print(
                f"\nplan for {targets[session]:,} faces, one slice of {scans[-1]} "
                "(EXPLAIN ANALYZE, BUFFERS of the product's SQL):"
            )
            for line in lines:
                print("  " + line)
    finally:
        database.stop()
        if not arguments.keep:
            shutil.rmtree(DB_DIR, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k faces, sessions of 1k and 10k")
    parser.add_argument("--queries", type=int, default=0, help="measured queries per session")
    parser.add_argument(
        "--scans",
        type=int,
        default=Settings().search_parallel_scans,
        help="parallel scans per search, measured side by side with one (default: the setting's)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database folder afterwards")
    parser.add_argument(
        "--storage",
        choices=["default", "plain", "main"],
        default="default",
        help="experiment: ALTER the embedding column's STORAGE before the fill (default: as migrated)",
    )
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
