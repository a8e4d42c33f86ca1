"""End to end through the real broker, a real worker process, PostgreSQL and the models."""

import numpy as np
import pytest

from storage.face_store import FaceStore
from streams.client import EventClient
from tests.conftest import FIXTURES, faceless_photo, labelled_photos, new_session
from tests.integration.events import index, search, upload

pytestmark = pytest.mark.integration


async def test_two_people_photo_stores_exactly_two_unit_norm_faces(
    client: EventClient, store: FaceStore
) -> None:
    session = new_session()

    answers = await index(client, [upload(session, "two_people.jpg")])

    answer = next(iter(answers.values()))
    assert answer.topic == client.topics.photo_indexed
    assert answer.document["face_count"] == 2
    assert await store.face_count(session, "two_people") == 2
    norms = np.linalg.norm(
        (await store.embeddings(session, "two_people")).astype(np.float64), axis=1
    )
    assert norms.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


async def test_photo_without_faces_is_recorded_as_indexed_with_zero_faces(
    client: EventClient, store: FaceStore
) -> None:
    session = new_session()

    answers = await index(client, [upload(session, "faceless.jpg")])

    assert next(iter(answers.values())).document["face_count"] == 0
    known = await store.known_photos(session, ["faceless"])
    assert known["faceless"].face_count == 0


async def test_obama_selfie_finds_every_obama_photo_and_nothing_else(client: EventClient) -> None:
    session = new_session()
    photos = labelled_photos()
    await index(client, [upload(session, photo.file) for photo in photos])

    results = await search(client, session, (FIXTURES / "obama.jpg").read_bytes())

    expected = {photo.photo_id for photo in photos if "obama" in photo.identities}
    found = [match["photo_id"] for match in results["matches"]]
    assert results["status"] == "matched"
    assert set(found) == expected
    assert len(found) == len(set(found)), "one row per photo"
    similarities = [match["similarity"] for match in results["matches"]]
    assert similarities == sorted(similarities, reverse=True)
    assert all(similarity >= results["threshold"] for similarity in similarities)


async def test_redelivered_upload_leaves_the_face_count_unchanged(
    client: EventClient, store: FaceStore
) -> None:
    session = new_session()
    event = upload(session, "knn_test_obama_and_biden.jpg")
    await index(client, [event])
    faces_once = await store.face_count(session)

    await index(client, [event])
    await index(client, [dict(event, event_id=event["event_id"] + "-again")])

    assert faces_once >= 3
    assert await store.face_count(session) == faces_once
    assert await store.photo_count(session) == 1


async def test_search_in_one_session_never_returns_another_sessions_photo(
    client: EventClient,
) -> None:
    session_a, session_b = new_session(), new_session()
    await index(client, [upload(session_a, "obama.jpg"), upload(session_a, "obama2.jpg")])
    await index(client, [upload(session_b, "biden.jpg"), upload(session_b, "knn_test_obama1.jpg")])

    results = await search(client, session_b, (FIXTURES / "obama-720p.jpg").read_bytes())

    assert [match["photo_id"] for match in results["matches"]] == ["knn_test_obama1"]
    assert results["session_id"] == session_b


async def test_selfie_without_a_face_gets_status_no_face(client: EventClient) -> None:
    session = new_session()
    await index(client, [upload(session, "obama.jpg")])

    results = await search(client, session, faceless_photo())

    assert results["status"] == "no_face"
    assert results["matches"] == []
    assert results["error"] is None


async def test_missing_photo_is_dead_lettered_with_the_reason(client: EventClient) -> None:
    session = new_session()

    answers = await index(client, [upload(session, "no-such-photo.jpg")])

    answer = next(iter(answers.values()))
    assert answer.topic == client.topics.photo_uploaded_dlq
    assert answer.document["error_code"] == "photo_not_found"
    assert "no-such-photo.jpg" in answer.document["reason"]
    assert answer.document["session_id"] == session
