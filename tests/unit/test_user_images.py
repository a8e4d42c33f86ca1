"""Photos as users send them come out upright, in the right colours, with the right faces."""

import numpy as np
import pytest

from faces.decoding import EncodedPhoto, decode_image
from faces.engine import FaceEngine
from schemas.errors import ImageTooLarge, UndecodableImage
from tests import images
from tests.conftest import read_image

LIMITS = {"max_pixels": 100_000_000, "min_side_px": 32}


def decode(data: bytes) -> np.ndarray:
    return decode_image(data, **LIMITS)


def similarity_to_upright(engine: FaceEngine, image: np.ndarray, name: str = "obama.jpg") -> float:
    reference = engine.selfie_face(read_image(name))
    face = engine.selfie_face(image)
    assert reference is not None and face is not None
    return float(reference.embedding @ face.embedding)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation_decodes_upright_with_its_one_face(
    engine: FaceEngine, orientation: int
) -> None:
    original = read_image("obama.jpg")

    decoded = decode(images.exif_rotated_jpeg(orientation))

    assert decoded.shape == original.shape
    assert np.abs(decoded.astype(int) - original.astype(int)).mean() < 4
    assert len(engine.index_photo(decoded).faces) == 1
    assert similarity_to_upright(engine, decoded) > 0.95


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_rotated_selfie_is_turned_upright_before_its_face_is_embedded(
    engine: FaceEngine, orientation: int
) -> None:
    selfie = decode(images.exif_rotated_jpeg(orientation, "obama2.jpg"))

    assert similarity_to_upright(engine, selfie, "obama2.jpg") > 0.95


@pytest.mark.parametrize(
    ("build", "faces"),
    [
        (images.heic, 1),
        (images.animated_webp, 1),
        (images.cmyk_jpeg, 1),
        (lambda: images.in_mode("L"), 1),
        (lambda: images.in_mode("LA"), 1),
        (lambda: images.in_mode("P"), 1),
        (lambda: images.in_mode("RGBA"), 1),
        (lambda: images.sixteen_bit_png(gray=True), 1),
        (lambda: images.sixteen_bit_png(gray=False), 1),
    ],
    ids=[
        "heic",
        "animated-webp",
        "cmyk-jpeg",
        "gray",
        "gray-alpha",
        "palette",
        "rgba",
        "16-bit-gray",
        "16-bit-rgb",
    ],
)
def test_each_format_and_pixel_mode_yields_the_face(
    engine: FaceEngine, build: object, faces: int
) -> None:
    decoded = decode(build())  # type: ignore[operator]

    assert decoded.ndim == 3 and decoded.shape[2] == 3 and decoded.dtype == np.uint8
    assert len(engine.index_photo(decoded).faces) == faces
    assert similarity_to_upright(engine, decoded) > 0.8


def test_an_animated_webp_is_read_from_its_first_frame(engine: FaceEngine) -> None:
    decoded = decode(images.animated_webp(first="obama.jpg", second="biden.jpg"))

    assert similarity_to_upright(engine, decoded, "obama.jpg") > 0.9


def test_a_cmyk_jpeg_keeps_its_colours() -> None:
    original = read_image("obama.jpg")

    decoded = decode(images.cmyk_jpeg())

    assert np.abs(decoded.mean(axis=(0, 1)) - original.mean(axis=(0, 1))).max() < 3


def test_sixteen_bit_pixels_are_scaled_not_wrapped() -> None:
    original = read_image("obama.jpg")

    decoded = decode(images.sixteen_bit_png(gray=False))

    assert np.abs(decoded.astype(int) - original.astype(int)).max() <= 1


def test_a_png_named_jpg_is_read_by_its_content(engine: FaceEngine) -> None:
    png_bytes = images.in_mode("RGB")

    assert len(engine.index_photo(decode(png_bytes)).faces) == 1


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = images.png_bomb()

    assert len(bomb) < 10_000
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        decode(bomb)


def test_a_fifty_megapixel_camera_photo_is_still_indexed(engine: FaceEngine) -> None:
    photo = decode(images.camera_jpeg(50))

    assert photo.shape[0] * photo.shape[1] > 49_000_000
    assert len(engine.index_photo(photo).faces) == 1


def test_a_truncated_jpeg_is_undecodable_with_a_reason() -> None:
    with pytest.raises(UndecodableImage, match="truncated"):
        decode(images.truncated_jpeg())


def test_a_large_jpeg_decoded_at_reduced_size_gives_the_same_faces_in_full_size_pixels(
    engine: FaceEngine,
) -> None:
    data = images.camera_jpeg(24, "two_people.jpg")
    full = engine.index_photo(decode(data))

    reduced = engine.index_encoded(EncodedPhoto(data, **LIMITS))

    assert len(reduced.faces) == len(full.faces) == 2
    for at_full, at_reduced in zip(full.faces, reduced.faces, strict=True):
        assert float(at_full.embedding @ at_reduced.embedding) > 0.9
        assert np.abs(np.subtract(at_full.bbox, at_reduced.bbox)).max() < 0.02 * max(
            decode(data).shape
        )
