"""Workers killed, a database stopped, S3 failing, a rebalance: nothing lost, nothing duplicated."""

import asyncio
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aioboto3
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from agents.events import IncomingEvent
from agents.indexing import IndexLimits, PhotoIndexer
from agents.retrying import Backoff
from faces.engine import FaceEngine
from storage.face_store import FaceStore
from storage.photo_source import S3PhotoSource
from streams.client import EventClient
from streams.embedded import EmbeddedDatabase, WorkerProcess, free_loopback_port
from streams.settings import Settings
from tests.conftest import FIXTURES, new_session, read_image, start_worker
from tests.integration.events import index, search, upload
from tests.integration.faults import FlakyS3, isolated, photos_at_least, wait_for

pytestmark = pytest.mark.integration

SMALL_PHOTOS = [
    "obama_small.jpg",
    "two_people.jpg",
    "obama-240p.jpg",
    "knn_test_kit_with_rose.jpg",
    "biden.jpg",
]


def expected_faces(engine: FaceEngine) -> dict[str, int]:
    return {name: len(engine.index_photo(read_image(name)).faces) for name in SMALL_PHOTOS}


def many_uploads(session: str, count: int) -> list[dict[str, object]]:
    return [
        upload(session, SMALL_PHOTOS[n % len(SMALL_PHOTOS)], photo_id=f"photo-{n:04d}")
        for n in range(count)
    ]


async def publish(client: EventClient, events: list[dict[str, object]]) -> None:
    for event in events:
        await client.publish(client.topics.photo_uploaded, str(event["session_id"]), event)


async def assert_indexed_exactly_once(
    store: FaceStore, session: str, events: list[dict[str, object]], faces: dict[str, int]
) -> None:
    assert await store.photo_count(session) == len(events)
    expected = sum(faces[str(event["source"])] for event in events)
    assert await store.face_count(session) == expected


async def test_killing_the_worker_mid_batch_again_and_again_loses_and_duplicates_nothing(
    settings: Settings, store: FaceStore, engine: FaceEngine, tmp_path: Path
) -> None:
    own = isolated(settings, "kill")
    session = new_session()
    events = many_uploads(session, 80)
    faces = expected_faces(engine)
    async with EventClient(own) as client:
        await publish(client, events)

    for round_number, progress in enumerate((10, 30, 55), start=1):
        worker = start_worker(own, tmp_path / f"worker-{round_number}.log")
        await wait_for(
            lambda p=progress: photos_at_least(store, session, p), 120, f"{progress} photos"
        )  # type: ignore[misc]
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()

    survivor = start_worker(own, tmp_path / "worker-last.log")
    try:
        await wait_for(lambda: photos_at_least(store, session, len(events)), 180, "every photo")
        await asyncio.sleep(2)  # any redelivery still in flight lands now, and must change nothing
        await assert_indexed_exactly_once(store, session, events, faces)
    finally:
        survivor.stop()


async def test_the_database_stopped_for_30_s_mid_indexing_loses_and_duplicates_nothing(
    settings: Settings, engine: FaceEngine, tmp_path: Path
) -> None:
    database = EmbeddedDatabase.start(tmp_path / "postgres")
    own = isolated(settings, "dbstop").model_copy(
        update={"vector_database_url": SecretStr(database.url)}
    )
    session = new_session()
    events = many_uploads(session, 60)
    faces = expected_faces(engine)
    store = await FaceStore.open(database.url)
    worker = start_worker(own, tmp_path / "worker.log", INDEXING_BATCH_SIZE="5")
    try:
        async with EventClient(own) as client:
            await publish(client, events)
            await wait_for(lambda: photos_at_least(store, session, 10), 120, "the first photos")
            await store.close()
            database.stop()
            await asyncio.sleep(30)
            assert worker.process.poll() is None, "the worker must wait for the database, not exit"
            database = EmbeddedDatabase.start(tmp_path / "postgres")
            store = await FaceStore.open(database.url)
            await wait_for(
                lambda: photos_at_least(store, session, len(events)),
                180,
                "every photo after the restart",
            )
            await asyncio.sleep(1)
            await assert_indexed_exactly_once(store, session, events, faces)
        assert "face store unavailable" in worker.log()
    finally:
        worker.stop()
        await store.close()
        database.stop()


async def test_two_workers_and_a_rebalance_in_the_middle_of_500_uploads_index_each_photo_once(
    settings: Settings, store: FaceStore, engine: FaceEngine, tmp_path: Path
) -> None:
    own = isolated(settings, "rebalance")
    # Twenty sessions spread over the partitions, so that each worker owns some of the work.
    sessions = [new_session() for _ in range(20)]
    events = [event for session in sessions for event in many_uploads(session, 25)]
    events.sort(key=lambda event: str(event["photo_id"]))
    faces = expected_faces(engine)
    first = start_worker(own, tmp_path / "first.log", ONNX_THREADS="1")
    second: WorkerProcess | None = None
    try:
        async with EventClient(own) as client:
            await publish(client, events)
            await wait_for(
                lambda: _indexed_at_least(store, sessions, 125), 180, "a quarter of the photos"
            )
            second = start_worker(own, tmp_path / "second.log", ONNX_THREADS="1")
            await wait_for(lambda: _indexed_at_least(store, sessions, 500), 400, "all 500 photos")
        await asyncio.sleep(2)
        for session in sessions:
            await assert_indexed_exactly_once(
                store, session, [e for e in events if e["session_id"] == session], faces
            )
        assert "indexed topic=" in second.log(), "the second worker never took over a partition"
    finally:
        first.stop()
        if second:
            second.stop()


async def _indexed_at_least(store: FaceStore, sessions: list[str], count: int) -> bool:
    return sum([await store.photo_count(session) for session in sessions]) >= count


@pytest.mark.parametrize(
    "crafted",
    [
        "a'; DROP TABLE faces; --",
        "x' OR '1'='1",
        "%",
        "séance-😀-会话",
        "s" * 200,
        "tab\tand\nnewline",
        '{"session_id": "other"}',
    ],
)
async def test_crafted_session_ids_never_see_another_sessions_photos(
    client: EventClient, store: FaceStore, crafted: str
) -> None:
    victim = new_session()
    await index(client, [upload(victim, "obama.jpg")])

    answers = await index(client, [upload(crafted, "obama2.jpg")])

    results = await search(client, crafted, (FIXTURES / "obama.jpg").read_bytes())

    assert next(iter(answers.values())).document["session_id"] == crafted
    assert [match["photo_id"] for match in results["matches"]] == ["obama2"]
    assert results["session_id"] == crafted
    assert await store.face_count(victim) == 1


BUCKET = "flaky-photos"


async def test_s3_errors_and_timeouts_are_retried_until_the_photo_is_indexed(
    engine: FaceEngine, store: FaceStore
) -> None:
    port = free_loopback_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    credentials = {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "flaky-secret-7781",
        "region_name": "us-east-1",
    }
    async with aioboto3.Session(**credentials).client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}"
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        await s3.put_object(
            Bucket=BUCKET, Key="s/two_people.jpg", Body=(FIXTURES / "two_people.jpg").read_bytes()
        )
    flaky = FlakyS3(f"http://127.0.0.1:{port}", errors=5, stalls=2, stall_s=3.0)
    await flaky.start()
    source = S3PhotoSource(
        BUCKET,
        endpoint_url=flaky.url,
        access_key="test",
        secret_key=credentials["aws_secret_access_key"],
        region="us-east-1",
        timeout_s=1.0,
        max_bytes=10_000_000,
    )
    session = new_session()
    event = upload(session, f"s3://{BUCKET}/s/two_people.jpg")
    try:
        with ThreadPoolExecutor(max_workers=1) as executor:
            indexer = PhotoIndexer(
                engine,
                store,
                source,
                executor,
                IndexLimits(),
                Backoff(first_delay_s=0.05, max_delay_s=0.2),
            )
            published = await indexer.index_batch(
                [
                    IncomingEvent(
                        "photo-uploaded", 0, 0, session.encode(), json.dumps(event).encode()
                    )
                ]
            )
    finally:
        await source.close()
        await flaky.stop()
        moto.stop()

    assert [publication.role for publication in published] == ["photo_indexed"]
    assert json.loads(published[0].value)["face_count"] == 2
    assert flaky.requests > flaky.errors + flaky.stalls
    assert await store.face_count(session) == 2
