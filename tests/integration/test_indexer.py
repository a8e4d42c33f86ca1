"""The index agent's bookkeeping, driven directly on the real store, source and models."""

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents import indexing
from agents.events import IncomingEvent, Publication
from agents.indexing import IndexLimits, PhotoIndexer
from faces.engine import FaceEngine
from storage.face_store import FaceStore
from storage.photo_source import LocalPhotoSource
from tests.conftest import FIXTURES, new_session
from tests.integration.events import upload

pytestmark = pytest.mark.integration


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "two_people.jpg"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    return tmp_path


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def indexer_of(
    engine: FaceEngine,
    store: FaceStore,
    photos: Path,
    executor: ThreadPoolExecutor,
    max_photos_per_session: int = 1000,
) -> PhotoIndexer:
    return PhotoIndexer(
        engine,
        store,
        LocalPhotoSource(photos, 10**8),
        executor,
        IndexLimits(max_photos_per_session=max_photos_per_session),
    )


def batch(events: list[dict[str, object]]) -> list[IncomingEvent]:
    return [
        IncomingEvent(
            "photo-uploaded",
            0,
            offset,
            str(event["session_id"]).encode(),
            json.dumps(event).encode(),
        )
        for offset, event in enumerate(events)
    ]


async def test_a_photo_that_fails_takes_no_place_in_a_nearly_full_session(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    indexer = indexer_of(engine, store, photos, executor, max_photos_per_session=3)
    session = new_session()
    await indexer.index_batch(batch([upload(session, "obama.jpg"), upload(session, "obama2.jpg")]))

    published = await indexer.index_batch(
        batch(
            [
                upload(session, "missing.jpg"),
                upload(session, "biden.jpg"),
                upload(session, "two_people.jpg"),
            ]
        )
    )

    answers = [json.loads(publication.value) for publication in published]
    assert [answer.get("error_code") or answer["status"] for answer in answers] == [
        "photo_not_found",
        "indexed",
        "session_full",
    ]
    assert "already holds 3 photos" in answers[2]["reason"]
    assert await store.photo_count(session) == 3


async def test_the_same_event_id_with_another_source_is_indexed_not_replayed(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    indexer = indexer_of(engine, store, photos, executor)
    session = new_session()
    first = upload(session, "two_people.jpg", photo_id="photo", event_id="event-1")
    await indexer.index_batch(batch([first]))

    again = await indexer.index_batch(batch([first]))
    other = await indexer.index_batch(batch([dict(first, source="obama.jpg")]))

    assert json.loads(again[0].value)["replayed"] is True
    assert json.loads(other[0].value)["replayed"] is False
    assert await store.face_count(session) == 1


def answers_of(published: list[Publication]) -> list[dict[str, object]]:
    return [json.loads(publication.value) for publication in published]


async def test_a_batch_prepared_before_the_last_one_is_saved_counts_its_photos(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    # The agent prepares the next batch while the last one is being saved: the session limit
    # must count the photos of both, although the store holds neither yet.
    indexer = indexer_of(engine, store, photos, executor, max_photos_per_session=3)
    session = new_session()
    first = await indexer.prepare(
        batch([upload(session, "obama.jpg"), upload(session, "obama2.jpg")])
    )
    second = await indexer.prepare(
        batch([upload(session, "biden.jpg"), upload(session, "two_people.jpg")])
    )
    assert await store.photo_count(session) == 0

    first_answers = answers_of(await indexer.finish(first))
    second_answers = answers_of(await indexer.finish(second))

    assert [answer["status"] for answer in first_answers] == ["indexed", "indexed"]
    assert [answer.get("error_code") or answer["status"] for answer in second_answers] == [
        "indexed",
        "session_full",
    ]
    assert await store.photo_count(session) == 3


async def test_an_event_redelivered_before_its_batch_is_saved_is_answered_as_a_replay(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    indexer = indexer_of(engine, store, photos, executor)
    session = new_session()
    event = upload(session, "two_people.jpg", photo_id="group", event_id="event-1")
    first = await indexer.prepare(batch([event]))
    redelivered = await indexer.prepare(batch([event]))
    newer = await indexer.prepare(batch([dict(event, event_id="event-2", source="obama.jpg")]))

    original = answers_of(await indexer.finish(first))[0]
    replayed = answers_of(await indexer.finish(redelivered))[0]
    reuploaded = answers_of(await indexer.finish(newer))[0]

    assert (original["replayed"], original["face_count"]) == (False, 2)
    assert (replayed["replayed"], replayed["faces"]) == (True, original["faces"])
    assert (reuploaded["replayed"], reuploaded["face_count"]) == (False, 1)
    stored = await store.known_photos(session, ["group"])
    assert stored["group"].event_id == "event-2"
    assert await store.face_count(session) == 1


async def test_photos_decoded_ahead_are_used_by_their_batch_and_none_is_left_behind(
    engine: FaceEngine,
    store: FaceStore,
    photos: Path,
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(indexing, "PREFETCHED_PER_BATCH", 2)
    indexer = indexer_of(engine, store, photos, executor)
    session = new_session()
    stored = upload(session, "two_people.jpg", photo_id="group", event_id="event-1")
    await indexer.index_batch(batch([stored]))
    events = batch([stored, upload(session, "biden.jpg"), upload(session, "obama.jpg")])

    indexer.prefetch(events)  # the replay and biden.jpg, the first two
    assert indexer.decoded_ahead == 2
    answers = answers_of(await indexer.index_batch(events))

    assert [(a["photo_id"], a["replayed"], a["face_count"]) for a in answers] == [
        ("group", True, 2),
        ("biden", False, 1),
        ("obama", False, 1),
    ]
    assert indexer.decoded_ahead == 0
    assert await store.photo_count(session) == 3


async def test_a_photo_uploaded_again_before_its_first_batch_is_saved_takes_one_place(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    # Three batches in hand at once, as when the database is slow to commit: the second
    # uploads p1 again, and the third must still see the session as full.
    indexer = indexer_of(engine, store, photos, executor, max_photos_per_session=2)
    session = new_session()
    first = await indexer.prepare(
        batch(
            [
                upload(session, "obama.jpg", photo_id="p1"),
                upload(session, "obama2.jpg", photo_id="p2"),
            ]
        )
    )
    again = await indexer.prepare(batch([upload(session, "biden.jpg", photo_id="p1")]))
    third = await indexer.prepare(batch([upload(session, "two_people.jpg", photo_id="p3")]))

    outcomes = [
        [answer.get("error_code") or answer["status"] for answer in answers_of(published)]
        for published in [await indexer.finish(b) for b in (first, again, third)]
    ]

    assert outcomes == [["indexed", "indexed"], ["indexed"], ["session_full"]]
    assert await store.photo_count(session) == 2
    assert (await store.known_photos(session, ["p1"]))["p1"].source == "biden.jpg"


async def test_batches_abandoned_unfinished_hold_no_place_and_no_answer(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    # The agent stopped after preparing a batch and before saving it; its events come again
    # to the same indexer.
    indexer = indexer_of(engine, store, photos, executor, max_photos_per_session=2)
    session = new_session()
    events = batch(
        [
            upload(session, "obama.jpg", photo_id="p1", event_id="e1"),
            upload(session, "biden.jpg", photo_id="p2", event_id="e2"),
        ]
    )
    await indexer.prepare(events)

    indexer.abandon_unfinished()
    answers = answers_of(await indexer.index_batch(events))

    assert [(a["status"], a["replayed"]) for a in answers] == [
        ("indexed", False),
        ("indexed", False),
    ]
    assert await store.photo_count(session) == 2


async def test_a_reupload_followed_by_a_redelivery_of_the_unsaved_original_is_answered(
    engine: FaceEngine, store: FaceStore, photos: Path, executor: ThreadPoolExecutor
) -> None:
    # The second batch holds a new upload of the photo and then the first batch's event again:
    # its last event follows the first batch, and the new upload follows its last event.
    indexer = indexer_of(engine, store, photos, executor)
    session = new_session()
    original = upload(session, "obama.jpg", photo_id="p", event_id="e1")
    reupload = upload(session, "two_people.jpg", photo_id="p", event_id="e2")
    first = await indexer.prepare(batch([original]))
    second = await indexer.prepare(batch([reupload, original]))

    await indexer.finish(first)
    answers = answers_of(await indexer.finish(second))

    assert [(a["event_id"], a["face_count"], a["replayed"]) for a in answers] == [
        ("e2", 1, True),
        ("e1", 1, True),
    ]
    assert (await store.known_photos(session, ["p"]))["p"].event_id == "e1"
    assert await store.face_count(session) == 1


class _CrashingEngine:
    """The real engine, except that its first `crashes` inference calls raise."""

    def __init__(self, engine: FaceEngine, crashes: int) -> None:
        self._engine, self.crashes = engine, crashes
        self.model = engine.model

    def index_decoded(self, *decoded: object) -> object:
        if self.crashes > 0:
            self.crashes -= 1
            raise RuntimeError("model crashed")
        return self._engine.index_decoded(*decoded)  # type: ignore[arg-type]


@pytest.mark.parametrize(("crashes", "expected"), [(2, ("indexed", 1)), (3, ("internal_error", 3))])
async def test_an_unforeseen_inference_error_is_retried_then_dead_lettered(
    engine: FaceEngine,
    store: FaceStore,
    photos: Path,
    executor: ThreadPoolExecutor,
    crashes: int,
    expected: tuple[str, int],
) -> None:
    crashing = _CrashingEngine(engine, crashes)
    indexer = indexer_of(crashing, store, photos, executor)  # type: ignore[arg-type]
    session = new_session()

    answer = answers_of(await indexer.index_batch(batch([upload(session, "obama.jpg")])))[0]

    outcome = (answer["status"], answer["face_count"]) if "status" in answer else None
    dead = (answer.get("error_code"), answer.get("attempts"))
    assert (outcome or dead) == expected
    assert await store.photo_count(session) == (1 if expected[0] == "indexed" else 0)
