"""What a similarity score means: unit vectors, dot products and the real model's separation."""

import numpy as np
import pytest

from faces.decoding import decode_image
from faces.engine import (
    DetectedFace,
    EmbeddedFace,
    FaceEngine,
    FaceLimits,
    clip_box,
    normalise,
    pad_for_detection,
)
from faces.model_pack import bundled_pack
from faces.runtime import OnnxRuntime
from streams.settings import Settings
from tests.conftest import faceless_photo, read_image

DEFAULT_THRESHOLD = Settings.model_fields["face_similarity_threshold"].default


def selfie(engine: FaceEngine, name: str) -> EmbeddedFace:
    face = engine.selfie_face(read_image(name))
    assert face is not None, f"no face found in {name}"
    return face


def test_the_default_threshold_is_0_30() -> None:
    threshold = DEFAULT_THRESHOLD

    assert threshold == 0.30


def test_normalise_returns_unit_norm_rows() -> None:
    vectors = np.random.default_rng(7).normal(size=(5, 512)) * np.array(
        [[0.01], [1], [3], [100], [1e4]]
    )

    unit = normalise(vectors)

    assert unit.shape == (5, 512)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), np.ones(5), atol=1e-6)


def test_normalise_keeps_each_rows_direction() -> None:
    vectors = np.array([[3.0, 4.0, 0.0], [0.0, -2.0, 0.0]])

    unit = normalise(vectors)

    np.testing.assert_allclose(unit, [[0.6, 0.8, 0.0], [0.0, -1.0, 0.0]], atol=1e-7)


def test_normalise_of_a_zero_row_stays_zero_instead_of_nan() -> None:
    vectors = np.zeros((1, 4))

    unit = normalise(vectors)

    np.testing.assert_array_equal(unit, np.zeros((1, 4), dtype=np.float32))


def test_cosine_of_normalised_vectors_equals_their_dot_product() -> None:
    a, b = np.random.default_rng(11).normal(size=(2, 512))
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    unit = normalise(np.stack([a, b]))

    assert float(unit[0] @ unit[1]) == pytest.approx(cosine, abs=1e-6)


def test_embeddings_from_the_engine_are_unit_norm(engine: FaceEngine) -> None:
    image = read_image("two_people.jpg")

    embeddings = engine.embed(image, engine.detect(image))

    assert embeddings.shape == (2, engine.dimension)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), [1.0, 1.0], atol=1e-6)


def test_embed_of_no_faces_is_an_empty_matrix(engine: FaceEngine) -> None:
    image = read_image("obama.jpg")

    embeddings = engine.embed(image, [])

    assert embeddings.shape == (0, engine.dimension)


def test_selfie_face_on_two_people_returns_the_larger_face(engine: FaceEngine) -> None:
    image = read_image("two_people.jpg")
    detected = engine.detect(image)
    largest = max(detected, key=lambda face: face.area)

    chosen = engine.selfie_face(image)

    assert len(detected) == 2
    assert detected[0].area > detected[1].area
    assert chosen is not None
    assert chosen.bbox == largest.bbox
    assert chosen.det_score == largest.det_score


def test_detect_returns_faces_largest_first(engine: FaceEngine) -> None:
    image = read_image("knn_test_obama_and_biden.jpg")

    detected = engine.detect(image)

    areas = [face.area for face in detected]
    assert len(detected) == 4
    assert areas == sorted(areas, reverse=True)


def test_index_photo_returns_faces_largest_first(engine: FaceEngine) -> None:
    image = read_image("knn_test_obama_and_biden.jpg")

    indexed = engine.index_photo(image)

    areas = [DetectedFace(face.bbox, face.det_score, np.empty(0)).area for face in indexed.faces]
    assert len(indexed.faces) == 4
    assert areas == sorted(areas, reverse=True)
    assert indexed.dropped == 0
    assert indexed.rejected == 0


def test_index_photo_keeps_max_faces_and_reports_the_rest_dropped() -> None:
    limited = FaceEngine(bundled_pack(), OnnxRuntime("cpu", threads=2), FaceLimits(max_faces=1))
    image = read_image("knn_test_obama_and_biden.jpg")
    largest = limited.detect(image)[0]

    indexed = limited.index_photo(image)

    assert len(indexed.faces) == 1
    assert indexed.faces[0].bbox == largest.bbox
    assert indexed.dropped == 3
    assert indexed.rejected == 0


def test_index_photo_rejects_faces_under_the_minimum_size() -> None:
    strict = FaceEngine(bundled_pack(), OnnxRuntime("cpu", threads=2), FaceLimits(min_face_px=200))
    image = read_image("two_people.jpg")

    indexed = strict.index_photo(image)

    # The two faces are about 150 and 155 px wide: both under 200 px.
    assert indexed.faces == []
    assert indexed.rejected == 2
    assert indexed.dropped == 0


def test_the_same_person_scores_above_the_default_threshold(engine: FaceEngine) -> None:
    first = selfie(engine, "obama.jpg")
    second = selfie(engine, "obama2.jpg")

    similarity = float(first.embedding @ second.embedding)

    assert similarity > DEFAULT_THRESHOLD


def test_different_people_score_below_the_default_threshold(engine: FaceEngine) -> None:
    obama = selfie(engine, "obama.jpg")
    biden = selfie(engine, "biden.jpg")

    similarity = float(obama.embedding @ biden.embedding)

    assert similarity < DEFAULT_THRESHOLD


def test_a_tightly_cropped_face_is_still_found_and_matches_the_uncropped_one(
    engine: FaceEngine,
) -> None:
    image = read_image("obama.jpg")
    uncropped = selfie(engine, "obama.jpg")
    x1, y1, x2, y2 = (round(value) for value in uncropped.bbox)
    crop = np.ascontiguousarray(image[y1:y2, x1:x2])

    found = engine.selfie_face(crop)

    assert found is not None
    assert float(found.embedding @ uncropped.embedding) > 0.5
    bx1, by1, bx2, by2 = found.bbox
    assert 0 <= bx1 < bx2 <= crop.shape[1]
    assert 0 <= by1 < by2 <= crop.shape[0]


def test_a_selfie_cut_too_tight_for_the_detector_is_found_on_a_padded_canvas(
    engine: FaceEngine,
) -> None:
    image = read_image("obama.jpg")
    uncropped = selfie(engine, "obama.jpg")
    x1, y1, x2, y2 = (round(value) for value in uncropped.bbox)
    width, height = x2 - x1, y2 - y1
    crop = np.ascontiguousarray(
        image[y1 + height // 10 : y2 - height // 20, x1 + width * 3 // 10 : x2 - width * 3 // 10]
    )

    found = engine.selfie_face(crop)

    assert engine.detect(crop) == []
    assert found is not None
    assert float(found.embedding @ uncropped.embedding) > DEFAULT_THRESHOLD
    bx1, by1, bx2, by2 = found.bbox
    assert 0 <= bx1 < bx2 <= crop.shape[1]
    assert 0 <= by1 < by2 <= crop.shape[0]


def test_a_faceless_photo_has_no_selfie_face(engine: FaceEngine) -> None:
    image = decode_image(faceless_photo(), max_pixels=10**8, min_side_px=32)

    found = engine.selfie_face(image)

    assert found is None
    assert engine.index_photo(image).faces == []


def test_pad_for_detection_adds_a_black_border_of_the_given_fraction() -> None:
    image = np.full((100, 40, 3), 200, dtype=np.uint8)

    canvas, border = pad_for_detection(image, 0.25)

    assert border == 25
    assert canvas.shape == (150, 90, 3)
    np.testing.assert_array_equal(canvas[25:125, 25:65], image)
    assert int(canvas[:25].max()) == 0
    assert int(canvas[:, :25].max()) == 0


def test_pad_for_detection_adds_at_least_one_pixel() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)

    canvas, border = pad_for_detection(image, 0.1)

    assert border == 1
    assert canvas.shape == (4, 4, 3)


def test_clip_box_keeps_a_box_inside_the_image() -> None:
    box = (-12.5, -3.0, 250.0, 90.0)

    clipped = clip_box(box, (80, 200, 3))

    assert clipped == (0.0, 0.0, 200.0, 80.0)


def test_clip_box_leaves_an_inside_box_unchanged() -> None:
    box = (10.5, 20.25, 30.0, 40.0)

    clipped = clip_box(box, (80, 200))

    assert clipped == box


def test_detected_face_area_and_min_side() -> None:
    face = DetectedFace(bbox=(10.0, 20.0, 40.0, 100.0), det_score=0.9, landmarks=np.zeros((5, 2)))

    assert face.area == 2400.0
    assert face.min_side == 30.0


def test_detected_face_area_of_an_inverted_box_is_zero() -> None:
    face = DetectedFace(bbox=(40.0, 20.0, 10.0, 100.0), det_score=0.9, landmarks=np.zeros((5, 2)))

    assert face.area == 0.0
