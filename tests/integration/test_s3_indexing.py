"""The index agent reading photos from S3: a local moto server spoken to over HTTP by aioboto3."""

import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import aioboto3
import pytest
from moto.server import ThreadedMotoServer

from agents.events import IncomingEvent
from agents.indexing import IndexLimits, PhotoIndexer
from faces.engine import FaceEngine
from storage.face_store import FaceStore
from storage.photo_source import S3PhotoSource
from streams.embedded import free_loopback_port
from tests.conftest import FIXTURES, new_session
from tests.integration.events import upload

pytestmark = pytest.mark.integration

BUCKET = "event-photos"
CREDENTIALS = {
    "aws_access_key_id": "test-access",
    "aws_secret_access_key": "test-secret",
    "region_name": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def indexer(
    s3_endpoint: str, engine: FaceEngine, store: FaceStore
) -> AsyncIterator[PhotoIndexer]:
    async with aioboto3.Session(**CREDENTIALS).client("s3", endpoint_url=s3_endpoint) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        for name in ("two_people.jpg", "obama.jpg"):
            await s3.put_object(
                Bucket=BUCKET, Key=f"wedding/{name}", Body=(FIXTURES / name).read_bytes()
            )
    source = S3PhotoSource(
        BUCKET,
        endpoint_url=s3_endpoint,
        access_key=CREDENTIALS["aws_access_key_id"],
        secret_key=CREDENTIALS["aws_secret_access_key"],
        region="us-east-1",
        timeout_s=5,
        max_bytes=10_000_000,
    )
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield PhotoIndexer(engine, store, source, executor, IndexLimits())
    await source.close()


def incoming(event: dict[str, object], offset: int) -> IncomingEvent:
    return IncomingEvent(
        "photo-uploaded", 0, offset, str(event["session_id"]).encode(), json.dumps(event).encode()
    )


async def test_photos_in_the_bucket_are_indexed_and_bad_keys_dead_lettered(
    indexer: PhotoIndexer, store: FaceStore
) -> None:
    session = new_session()
    events = [
        upload(session, f"s3://{BUCKET}/wedding/two_people.jpg"),
        upload(session, "wedding/obama.jpg"),
        upload(session, f"s3://{BUCKET}/wedding/missing.jpg"),
        upload(session, "s3://someone-elses-bucket/wedding/obama.jpg", photo_id="elsewhere"),
    ]

    published = await indexer.index_batch(
        [incoming(event, offset) for offset, event in enumerate(events)]
    )

    answers = [json.loads(publication.value) for publication in published]
    assert [publication.role for publication in published] == [
        "photo_indexed",
        "photo_indexed",
        "dead_letter",
        "dead_letter",
    ]
    assert [answers[0]["face_count"], answers[1]["face_count"]] == [2, 1]
    assert [answers[2]["error_code"], answers[3]["error_code"]] == [
        "photo_not_found",
        "source_refused",
    ]
    assert await store.face_count(session) == 3
