"""Turning uploaded bytes into the upright BGR pixels the face models expect.

Photos arrive as phones and cameras write them: rotated by an EXIF tag, as HEIC, WebP or PNG,
with alpha, in grayscale, palette or CMYK, at 16 bits per channel. Limits are checked from the
header, before any pixel is decoded, so a few kilobytes that claim 30000x30000 pixels cost
nothing.
"""

import io
import warnings
from dataclasses import dataclass
from math import ceil

import cv2
import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.errors import ImageTooLarge, ImageTooSmall, UndecodableImage

pillow_heif.register_heif_opener()
# Our own pixel limit below replaces Pillow's global one, which only warns up to twice its value.
Image.MAX_IMAGE_PIXELS = None

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """What an image must be to be decoded at all, photo or selfie."""

    max_pixels: int = 100_000_000
    min_side_px: int = 32


class EncodedPhoto:
    """An image whose header has been read and checked against the limits; pixels on demand.

    JPEGs can be decoded at 1/2, 1/4 or 1/8 of their size straight from the compressed data
    (Pillow's draft mode), several times faster than a full decode and with a fraction of the
    memory: detection only ever looks at 640 pixels, so most of a 24 MP frame is never needed.
    """

    @classmethod
    def within(cls, data: bytes, limits: ImageLimits) -> "EncodedPhoto":
        return cls(data, max_pixels=limits.max_pixels, min_side_px=limits.min_side_px)

    def __init__(self, data: bytes, *, max_pixels: int, min_side_px: int) -> None:
        self.data = data
        width, height = _open(data).size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {max_pixels} (MAX_IMAGE_PIXELS)"
            )
        if min(width, height) < min_side_px:
            raise ImageTooSmall(
                f"the image is {width}x{height} pixels; a side under {min_side_px} px holds no face worth matching"
            )
        self.long_side = max(width, height)

    def decode(self, long_side_px: int | None = None) -> tuple[np.ndarray, float]:
        """Upright BGR pixels with a long side of at least `long_side_px` (None: full size),
        and their scale against the full image (1.0, 0.5, 0.25 or 0.125)."""
        image = _open(self.data)
        try:
            image.seek(0)  # animated WebP and GIF: the first frame
            if (
                long_side_px is not None
                and image.format == "JPEG"
                and long_side_px < self.long_side
            ):
                fraction = long_side_px / self.long_side
                image.draft("RGB", (ceil(image.width * fraction), ceil(image.height * fraction)))
            image.load()
            scale = max(image.size) / self.long_side
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # a malformed EXIF block is not worth refusing a photo
                # In place: an upright photo (most of them) is not copied for nothing.
                ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb(image)
        except (OSError, ValueError, SyntaxError) as error:
            raise UndecodableImage(f"the image is damaged or truncated: {error}") from error
        # One pass from Pillow's RGB buffer to the BGR array the models take.
        return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR), scale


def _open(data: bytes) -> Image.Image:
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise UndecodableImage(
            "the bytes are not an image format we read (JPEG, PNG, WebP, HEIC, TIFF, BMP, GIF)"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        # A file cut inside its header fails here already, before any pixel is read.
        raise UndecodableImage(f"the image header is damaged or truncated: {error}") from error


def decode_image(data: bytes, *, max_pixels: int, min_side_px: int) -> np.ndarray:
    """Decode one image at full size to an upright HxWx3 uint8 BGR array, or raise why not."""
    pixels, _ = EncodedPhoto(data, max_pixels=max_pixels, min_side_px=min_side_px).decode()
    return pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _scale_to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    # Pillow's own conversion of 16-bit gray clips (or wraps) values above 255, which leaves a
    # nearly white or noisy frame where the detector finds nothing; scale the range instead.
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1.0)
    if image.mode == "I" and pixels.max() <= 255:
        top = 255.0
    gray = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
