"""Images as phones and cameras write them, built from the fixture photos in the test itself."""

import io
import struct
import zlib

import cv2
import numpy as np
import pillow_heif
from PIL import Image

from tests.conftest import FIXTURES

# EXIF orientation k: how to store the upright pixels so that a viewer applying k shows them
# upright again (the inverse of the transform that tag k asks for).
STORED_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
EXIF_ORIENTATION_TAG = 0x0112


def upright(name: str = "obama.jpg") -> Image.Image:
    return Image.open(FIXTURES / name).convert("RGB")


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(orientation: int, name: str = "obama.jpg") -> bytes:
    """A JPEG whose pixels are stored turned, with the EXIF tag that turns them back."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    stored = upright(name).transpose(STORED_FOR_ORIENTATION[orientation])
    return encoded(stored, "JPEG", quality=95, exif=exif.tobytes())


def heic(name: str = "obama.jpg") -> bytes:
    heif = pillow_heif.from_pillow(upright(name))
    buffer = io.BytesIO()
    heif.save(buffer, format="HEIF", quality=90)
    return buffer.getvalue()


def animated_webp(first: str = "obama.jpg", second: str = "biden.jpg") -> bytes:
    frames = [upright(first), upright(second).resize(upright(first).size)]
    return encoded(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=200, quality=90
    )


def in_mode(mode: str, name: str = "obama.jpg") -> bytes:
    """PNG in a Pillow mode: L (grayscale), LA (gray + alpha), P (palette), RGBA."""
    return encoded(upright(name).convert(mode), "PNG")


def cmyk_jpeg(name: str = "obama.jpg") -> bytes:
    return encoded(upright(name).convert("CMYK"), "JPEG", quality=95)


def sixteen_bit_png(name: str = "obama.jpg", *, gray: bool) -> bytes:
    pixels = cv2.imread(str(FIXTURES / name))
    if gray:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    ok, data = cv2.imencode(".png", pixels.astype(np.uint16) * 257)
    assert ok
    return data.tobytes()


def truncated_jpeg(name: str = "obama.jpg") -> bytes:
    data = (FIXTURES / name).read_bytes()
    return data[: len(data) // 2]


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG of a few kilobytes whose header claims width x height pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 64, 9)  # the first 64 rows; the rest is missing
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def camera_jpeg(megapixels: float, name: str = "obama.jpg") -> bytes:
    """A fixture upscaled to a camera's resolution, e.g. 50 MP."""
    image = upright(name)
    scale = (megapixels * 1_000_000 / (image.width * image.height)) ** 0.5
    return encoded(
        image.resize((int(image.width * scale), int(image.height * scale))), "JPEG", quality=85
    )
