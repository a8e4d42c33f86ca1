"""Uploaded bytes to upright BGR pixels: orientation, odd modes, damage and size limits."""

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faces.decoding import decode_image
from faces.engine import DetectedFace, FaceEngine
from schemas.errors import ImageTooLarge, ImageTooSmall, UndecodableImage
from tests.conftest import FIXTURES, read_image

MAX_PIXELS = 100_000_000
MIN_SIDE = 32
ORIENTATION = 0x0112


def decode(data: bytes) -> np.ndarray:
    return decode_image(data, max_pixels=MAX_PIXELS, min_side_px=MIN_SIDE)


def fixture_rgb(name: str) -> Image.Image:
    with Image.open(FIXTURES / name) as opened:
        return opened.convert("RGB")


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def as_bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def only_face(engine: FaceEngine, image: np.ndarray) -> DetectedFace:
    faces = engine.detect(image)
    assert len(faces) == 1
    return faces[0]


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# How the pixels must be stored so that applying the EXIF orientation shows the upright photo.
STORED_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # stored turned left; the viewer turns it right
    8: Image.Transpose.ROTATE_270,  # stored turned right; the viewer turns it left
}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_gives_an_upright_image(engine: FaceEngine, orientation: int) -> None:
    upright = fixture_rgb("obama.jpg")
    reference = decode(encode(upright, "JPEG", quality=95))
    stored = upright.transpose(STORED_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())

    decoded = decode(data)

    assert decoded.shape == reference.shape == (1137, 910, 3)
    assert mean_difference(decoded, reference) < 3.0
    face, reference_face = only_face(engine, decoded), only_face(engine, reference)
    assert face.area == pytest.approx(reference_face.area, rel=0.1)
    np.testing.assert_allclose(face.bbox, reference_face.bbox, atol=10)


def test_a_rotated_photo_without_an_exif_orientation_stays_as_stored() -> None:
    stored = fixture_rgb("obama.jpg").transpose(Image.Transpose.ROTATE_90)

    decoded = decode(encode(stored, "JPEG", quality=95))

    assert decoded.shape == (910, 1137, 3)


def test_decoded_pixels_are_bgr_uint8() -> None:
    red = Image.new("RGB", (64, 48), (255, 0, 0))

    decoded = decode(encode(red, "PNG"))

    assert decoded.shape == (48, 64, 3)
    assert decoded.dtype == np.uint8
    assert decoded.flags["C_CONTIGUOUS"]
    assert decoded[0, 0].tolist() == [0, 0, 255]


def test_a_16_bit_grayscale_png_still_yields_one_face(engine: FaceEngine) -> None:
    gray = np.asarray(fixture_rgb("obama.jpg").convert("L"), dtype=np.uint16) * 257
    sixteen = Image.fromarray(gray)
    data = encode(sixteen, "PNG")

    decoded = decode(data)

    assert sixteen.mode == "I;16"
    assert decoded.shape == (1137, 910, 3)
    assert abs(float(decoded.mean()) - float(gray.mean()) / 257) < 1.0
    assert len(engine.detect(decoded)) == 1


def test_a_16_bit_grayscale_png_keeps_its_tones_scaled_to_8_bits() -> None:
    ramp = np.tile(np.array([0, 257 * 64, 257 * 128, 65535], dtype=np.uint16).repeat(16), (40, 1))
    data = encode(Image.fromarray(ramp), "PNG")

    decoded = decode(data)

    assert decoded.shape == (40, 64, 3)
    assert decoded[0, ::16, 0].tolist() == [0, 64, 128, 255]


def test_an_rgba_png_decodes_to_three_channels_on_white() -> None:
    rgba = fixture_rgb("obama.jpg").convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, dtype=np.uint8)
    alpha[:, :100] = 0
    rgba.putalpha(Image.fromarray(alpha, mode="L"))

    decoded = decode(encode(rgba, "PNG"))

    assert decoded.shape == (1137, 910, 3)
    assert int(decoded[:, :100].min()) == 255
    np.testing.assert_array_equal(decoded[:, 100:], as_bgr(fixture_rgb("obama.jpg"))[:, 100:])


def test_the_rgba_fixture_png_yields_one_face(engine: FaceEngine) -> None:
    image = read_image("alex-lacamoire.png")

    faces = engine.detect(image)

    assert image.shape == (394, 424, 3)
    assert len(faces) == 1


def test_a_palette_png_with_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    palette.paste(1, (20, 0, 40, 40))
    data = encode(palette, "PNG", transparency=0)

    decoded = decode(data)

    assert decoded.shape == (40, 40, 3)
    assert decoded[5, 5].tolist() == [255, 255, 255]
    assert decoded[5, 30].tolist() == [0, 0, 255]


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1", "LA"])
def test_other_modes_decode_to_three_channels(mode: str) -> None:
    image = fixture_rgb("obama_small.jpg").convert(mode)
    format = "JPEG" if mode == "CMYK" else "PNG"

    decoded = decode(encode(image, format))

    assert decoded.shape == (240, 320, 3)
    assert decoded.dtype == np.uint8


def test_a_webp_photo_yields_one_face(engine: FaceEngine) -> None:
    data = encode(fixture_rgb("obama.jpg"), "WEBP", quality=90)

    decoded = decode(data)

    assert decoded.shape == (1137, 910, 3)
    assert len(engine.detect(decoded)) == 1


def test_an_animated_gif_decodes_its_first_frame() -> None:
    frames = [Image.new("RGB", (48, 48), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    decoded = decode(data)

    assert decoded.shape == (48, 48, 3)
    assert decoded[10, 10].tolist() == [0, 0, 255]


def test_zero_bytes_are_undecodable() -> None:
    data = b""

    with pytest.raises(UndecodableImage, match="empty"):
        decode(data)


def test_text_saved_as_jpg_is_undecodable(tmp_path: Path) -> None:
    saved = tmp_path / "IMG_0001.jpg"
    saved.write_text("this is a text file, not a photo\n" * 20)
    data = saved.read_bytes()

    with pytest.raises(UndecodableImage, match="not an image format"):
        decode(data)


def test_a_truncated_jpeg_is_undecodable() -> None:
    whole = (FIXTURES / "obama.jpg").read_bytes()

    with pytest.raises(UndecodableImage, match="damaged or truncated"):
        decode(whole[: len(whole) // 2])


@pytest.mark.parametrize(("name", "cut"), [("obama.jpg", 200), ("alex-lacamoire.png", 100)])
def test_an_image_cut_inside_its_header_is_undecodable(name: str, cut: int) -> None:
    whole = (FIXTURES / name).read_bytes()

    with pytest.raises(UndecodableImage):
        decode(whole[:cut])


def test_undecodable_images_are_permanent_faults() -> None:
    with pytest.raises(UndecodableImage) as refused:
        decode(b"\x00")

    assert refused.value.retriable is False
    assert refused.value.code == "undecodable_image"


def png_claiming(width: int, height: int) -> bytes:
    """A real tiny PNG whose IHDR is patched to claim another size (with a valid CRC)."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_png_claiming_30000_by_30000_pixels_is_refused_quickly() -> None:
    data = png_claiming(30000, 30000)
    started = time.perf_counter()

    with pytest.raises(ImageTooLarge, match="30000x30000 = 900000000 pixels"):
        decode(data)

    assert len(data) < 200
    assert time.perf_counter() - started < 0.5


def test_an_image_exactly_at_the_pixel_limit_is_accepted() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")

    decoded = decode_image(data, max_pixels=5000, min_side_px=MIN_SIDE)

    assert decoded.shape == (50, 100, 3)


def test_an_image_one_pixel_over_the_limit_is_refused() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")

    with pytest.raises(ImageTooLarge):
        decode_image(data, max_pixels=4999, min_side_px=MIN_SIDE)


def test_a_10_by_10_image_is_too_small() -> None:
    data = encode(Image.new("RGB", (10, 10), (128, 128, 128)), "PNG")

    with pytest.raises(ImageTooSmall, match="10x10"):
        decode(data)


def test_a_thin_image_is_too_small_by_its_shorter_side() -> None:
    data = encode(Image.new("RGB", (4000, 31)), "PNG")

    with pytest.raises(ImageTooSmall):
        decode(data)


def test_an_image_with_its_shorter_side_at_the_minimum_is_accepted() -> None:
    data = encode(Image.new("RGB", (32, 400)), "PNG")

    decoded = decode(data)

    assert decoded.shape == (400, 32, 3)
