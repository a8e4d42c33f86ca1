"""The pgvector face store on a real PostgreSQL: idempotence, one row per photo, isolation."""

import numpy as np
import pytest

from faces.engine import FaceEngine
from storage.face_store import FaceStore, IndexedPhoto, StoredFace
from tests.conftest import new_session, read_image

pytestmark = pytest.mark.integration


def faces_of(engine: FaceEngine, name: str) -> list[StoredFace]:
    found = engine.index_photo(read_image(name))
    return [StoredFace(face.bbox, face.det_score, face.embedding) for face in found.faces]


def photo(
    session: str, photo_id: str, faces: list[StoredFace], model: str = "buffalo_s"
) -> IndexedPhoto:
    return IndexedPhoto(session, photo_id, f"event-{photo_id}", f"{photo_id}.jpg", model, faces)


async def test_a_photo_with_two_matching_faces_is_one_row_with_its_best_similarity(
    engine: FaceEngine, store: FaceStore
) -> None:
    session = new_session()
    close, far = faces_of(engine, "obama-720p.jpg")[0], faces_of(engine, "obama2.jpg")[0]
    await store.save([photo(session, "collage", [far, close])])
    query = faces_of(engine, "obama.jpg")[0].embedding

    matches = await store.search(session, "buffalo_s", query, threshold=0.3, limit=10)

    assert [match.photo_id for match in matches] == ["collage"]
    assert matches[0].similarity == pytest.approx(float(query @ close.embedding), abs=1e-5)
    assert matches[0].bbox == pytest.approx(close.bbox, abs=1e-3)


async def test_threshold_and_limit_cut_the_ranked_photos(
    engine: FaceEngine, store: FaceStore
) -> None:
    session = new_session()
    names = ["obama-720p.jpg", "obama2.jpg", "knn_test_obama1.jpg", "biden.jpg"]
    await store.save([photo(session, name.split(".")[0], faces_of(engine, name)) for name in names])
    query = faces_of(engine, "obama.jpg")[0].embedding
    scores = {
        name.split(".")[0]: float(query @ faces_of(engine, name)[0].embedding) for name in names
    }
    ranked = sorted(scores, key=lambda photo_id: -scores[photo_id])

    everything = await store.search(session, "buffalo_s", query, threshold=-1.0, limit=50)
    above = await store.search(session, "buffalo_s", query, threshold=0.3, limit=50)
    top_two = await store.search(session, "buffalo_s", query, threshold=-1.0, limit=2)

    assert [match.photo_id for match in everything] == ranked
    assert [match.photo_id for match in above] == [p for p in ranked if scores[p] >= 0.3]
    assert "biden" not in {match.photo_id for match in above}
    assert [match.photo_id for match in top_two] == ranked[:2]


async def test_saving_the_same_photo_again_replaces_its_faces(
    engine: FaceEngine, store: FaceStore
) -> None:
    session = new_session()
    two = faces_of(engine, "two_people.jpg")
    await store.save([photo(session, "group", two)])

    await store.save([photo(session, "group", two)])
    await store.save([photo(session, "group", two[:1])])

    assert await store.face_count(session) == 1
    assert await store.photo_count(session) == 1


async def test_other_sessions_and_other_models_are_never_searched(
    engine: FaceEngine, store: FaceStore
) -> None:
    mine, theirs = new_session(), new_session()
    obama = faces_of(engine, "obama2.jpg")
    await store.save(
        [photo(theirs, "theirs", obama), photo(mine, "other-model", obama, model="buffalo_l")]
    )
    query = faces_of(engine, "obama.jpg")[0].embedding

    assert await store.search(mine, "buffalo_s", query, threshold=-1.0, limit=50) == []
    assert [m.photo_id for m in await store.search(theirs, "buffalo_s", query, -1.0, 50)] == [
        "theirs"
    ]


async def test_stored_embeddings_are_the_engines_to_float32_precision(
    engine: FaceEngine, store: FaceStore
) -> None:
    session = new_session()
    faces = faces_of(engine, "two_people.jpg")

    await store.save([photo(session, "two_people", faces)])

    stored = await store.embeddings(session, "two_people")
    np.testing.assert_allclose(stored, np.stack([face.embedding for face in faces]), atol=1e-6)


def at_similarity(query: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose inner product with the unit `query` is `similarity`."""
    other = rng.standard_normal(query.shape[0])
    other -= (other @ query) * query
    other /= np.linalg.norm(other)
    vector = similarity * query + np.sqrt(1 - similarity**2) * other
    return (vector / np.linalg.norm(vector)).astype(np.float32)


async def test_faces_within_half_precision_error_of_the_threshold_are_decided_in_float32(
    store: FaceStore,
) -> None:
    # The scan compares half-precision copies, which put some of these faces on the wrong side
    # of the threshold; the answer must still be exactly what float32 arithmetic gives.
    rng = np.random.default_rng(7)
    session, threshold = new_session(), 0.3
    query = at_similarity(rng.standard_normal(512).astype(np.float32) / 23, 0.0, rng)
    # Half precision moves these inner products by around 1e-5 (at most 1e-3).
    offsets = np.linspace(-6e-5, 6e-5, 41)
    faces = {
        f"p{i:02d}": at_similarity(query, threshold + offset, rng)
        for i, offset in enumerate(offsets)
        if abs(offset) > 1e-6  # clear of float32 rounding at the threshold itself
    }
    exact = {photo_id: float(query @ face) for photo_id, face in faces.items()}
    half = {
        photo_id: float(
            query.astype(np.float16).astype(np.float32) @ face.astype(np.float16).astype(np.float32)
        )
        for photo_id, face in faces.items()
    }
    flipped = [p for p in faces if (exact[p] >= threshold) != (half[p] >= threshold)]
    assert flipped, "the test needs faces that half precision puts on the wrong side"
    bbox = (1.0, 2.0, 30.0, 40.0)
    await store.save([photo(session, p, [StoredFace(bbox, 0.9, f)]) for p, f in faces.items()])

    matches = await store.search(session, "buffalo_s", query, threshold, limit=100)

    expected = sorted((p for p in faces if exact[p] >= threshold), key=lambda p: -exact[p])
    assert [match.photo_id for match in matches] == expected
    for match in matches:
        assert match.similarity == pytest.approx(exact[match.photo_id], abs=1e-6)


async def bucket_of(store: FaceStore, photo_id: str) -> int:
    # The bucket expression of the scan index, asked of the database itself.
    bucket: int = await store._pool.fetchval("SELECT hashtext($1) & 63", photo_id)
    return bucket


@pytest.mark.parametrize("parallel_scans", [1, 3, 8])
async def test_a_search_split_into_parallel_scans_answers_as_one_exact_scan(
    database: str, store: FaceStore, parallel_scans: int
) -> None:
    rng = np.random.default_rng(11)
    session = new_session()
    query = rng.standard_normal(512).astype(np.float32)
    query /= np.linalg.norm(query)
    scores = np.linspace(0.95, 0.05, 60)
    photos = {
        f"p{i:02d}": at_similarity(query, float(score), rng) for i, score in enumerate(scores)
    }
    # Two faces of one photo, and equal scores in photos whose ids sort differently by code
    # point than in most locales ("B" before "a"): ties must break the same way in every slice.
    twins = {name: at_similarity(query, 0.5, rng) for name in ("a-twin", "B-twin", "c-twin")}
    twin_face = next(iter(twins.values()))
    bbox = (1.0, 2.0, 30.0, 40.0)
    await store.save(
        [photo(session, p, [StoredFace(bbox, 0.9, face)]) for p, face in photos.items()]
        + [photo(session, p, [StoredFace(bbox, 0.9, twin_face)] * 2) for p in twins]
    )
    exact = {p: float(query @ face) for p, face in photos.items()}
    exact |= {p: float(query @ twin_face) for p in twins}
    ranked = sorted(exact, key=lambda p: (-exact[p], p))
    top_ten = ranked[:10]
    assert len({await bucket_of(store, p) for p in top_ten}) > 3, "the best are spread out"

    split = await FaceStore.open(database, parallel_scans=parallel_scans)
    try:
        everything = await split.search(session, "buffalo_s", query, threshold=0.3, limit=100)
        best = await split.search(session, "buffalo_s", query, threshold=-1.0, limit=10)
    finally:
        await split.close()

    assert [m.photo_id for m in everything] == [p for p in ranked if exact[p] >= 0.3]
    assert [m.photo_id for m in best] == top_ten
    for match in everything:
        assert match.similarity == pytest.approx(exact[match.photo_id], abs=1e-6)
    assert [m.photo_id for m in everything if m.photo_id.endswith("twin")] == [
        "B-twin",
        "a-twin",
        "c-twin",
    ]
