"""The face store when its connections die or its database stops answering: a retriable error,
never a hang and never a raw driver error, and the next call works."""

import asyncio
import os
import signal
import threading
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest

from agents.retrying import Backoff, retry_transient
from schemas.errors import StorageUnavailable
from storage.face_store import FaceStore, IndexedPhoto, Match, StoredFace
from tests.conftest import new_session

pytestmark = pytest.mark.integration

PARALLEL_SCANS = 2


POOL_NAME = "store-fault-tests"


@pytest.fixture
async def own_store(database: str) -> AsyncIterator[FaceStore]:
    # A pool of its own, named: these tests kill and freeze its server processes, and only its.
    named = f"{database}&application_name={POOL_NAME}"
    store = await FaceStore.open(named, parallel_scans=PARALLEL_SCANS, command_timeout_s=1.0)
    yield store
    await store.close()


async def a_session_of(store: FaceStore, photos: int) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(3)
    session = new_session()
    vectors = rng.standard_normal((photos, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await store.save(
        [
            IndexedPhoto(session, f"p{i}", f"e{i}", f"p{i}.jpg", "buffalo_s", [face])
            for i, face in enumerate(StoredFace((0, 0, 9, 9), 0.9, v) for v in vectors)
        ]
    )
    return session, vectors[0]


async def searched_as_an_agent_does(
    store: FaceStore, session: str, query: np.ndarray
) -> list[Match]:
    # The first call after a fault may still meet a connection that died with it.
    return await retry_transient(
        lambda: store.search(session, "buffalo_s", query, 0.9, 5),
        "searching",
        Backoff(first_delay_s=0.05, max_attempts=5),
    )


async def server_pids(admin: asyncpg.Connection) -> list[int]:
    """The server processes behind the test store's pool."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1", POOL_NAME
    )
    return [row["pid"] for row in rows]


async def test_connections_the_server_closed_give_a_retriable_error_then_answers(
    database: str, own_store: FaceStore
) -> None:
    session, query = await a_session_of(own_store, 200)
    admin = await asyncpg.connect(database)
    outcomes: dict[str, int] = {"answered": 0, "unavailable": 0}
    try:
        for _ in range(20):
            for pid in await server_pids(admin):
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            try:
                # A new task, as an agent's next event would run it.
                found = await asyncio.create_task(
                    own_store.search(session, "buffalo_s", query, 0.9, 5)
                )
                assert [match.photo_id for match in found] == ["p0"]
                outcomes["answered"] += 1
            except StorageUnavailable:
                outcomes["unavailable"] += 1
    finally:
        await admin.close()

    assert sum(outcomes.values()) == 20  # no other kind of error escaped
    assert [
        match.photo_id for match in await searched_as_an_agent_does(own_store, session, query)
    ] == ["p0"]


async def test_a_database_that_stops_answering_fails_the_search_as_unavailable(
    database: str, own_store: FaceStore
) -> None:
    session, query = await a_session_of(own_store, 50)
    await own_store.search(session, "buffalo_s", query, 0.9, 5)  # opens a connection per slice
    admin = await asyncpg.connect(database)
    pids = await server_pids(admin)
    await admin.close()
    assert len(pids) >= PARALLEL_SCANS

    def resume() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    # Thawed after 20 s whatever happens, so that a search that waits for ever fails the test
    # (it then answers, and no error was raised) instead of hanging the suite.
    thaw = threading.Timer(20, resume)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    thaw.start()
    try:
        with pytest.raises(StorageUnavailable, match="TimeoutError"):
            await own_store.search(session, "buffalo_s", query, 0.9, 5)
    finally:
        thaw.cancel()
        resume()

    assert [
        match.photo_id for match in await searched_as_an_agent_does(own_store, session, query)
    ] == ["p0"]
