"""Upgrading a database that already holds faces: the later migrations apply, and nothing is lost."""

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest
from pgvector.asyncpg import register_vector

from faces.engine import FaceEngine
from storage.face_store import FaceStore
from storage.migrations import apply_migrations, bundled_migrations
from tests.conftest import read_image

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_database(database: str) -> AsyncIterator[str]:
    name = f"upgrade_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(database)
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(database)._replace(path=f"/{name}"))
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def index_the_old_way(url: str, photo_id: str, engine: FaceEngine, image: str) -> None:
    """A photo and its faces as a worker of any earlier version wrote them."""
    connection = await asyncpg.connect(url)
    await register_vector(connection)
    faces = engine.index_photo(read_image(image)).faces
    async with connection.transaction():
        await connection.execute(
            """INSERT INTO photos (session_id, photo_id, status, face_count, model, source,
                                   event_id)
               VALUES ('s', $1, 'indexed', $2, 'buffalo_s', $1 || '.jpg', 'e-' || $1)""",
            photo_id,
            len(faces),
        )
        await connection.executemany(
            """INSERT INTO faces (session_id, photo_id, face_index, model, embedding,
                                  det_score, bbox)
               VALUES ('s', $1, $2, 'buffalo_s', $3, $4, $5)""",
            [(photo_id, i, f.embedding, f.det_score, list(f.bbox)) for i, f in enumerate(faces)],
        )
    await connection.close()


@pytest.mark.parametrize("applied", [1, 2, 3])
async def test_a_database_of_an_earlier_version_upgrades_and_keeps_finding_its_faces(
    engine: FaceEngine, empty_database: str, applied: int
) -> None:
    connection = await asyncpg.connect(empty_database)
    assert await apply_migrations(connection, up_to=applied) == list(range(1, applied + 1))
    await connection.close()
    await index_the_old_way(empty_database, "obama2", engine, "obama2.jpg")
    await index_the_old_way(empty_database, "biden", engine, "biden.jpg")
    selfie = engine.selfie_face(read_image("obama.jpg"))
    assert selfie is not None

    store = await FaceStore.open(empty_database)
    try:
        matches = await store.search("s", "buffalo_s", selfie.embedding, 0.3, 50)
        everyone = await store.search("s", "buffalo_s", selfie.embedding, -1.0, 50)
        versions = await store._pool.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        indexes = await store._pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'faces'"
        )
    finally:
        await store.close()

    assert [m.photo_id for m in matches] == ["obama2"]
    assert {m.photo_id for m in everyone} == {"obama2", "biden"}
    assert [row["version"] for row in versions] == [m.version for m in bundled_migrations()]
    assert {row["indexname"] for row in indexes} == {"faces_pkey", "faces_session_scan_slices"}
