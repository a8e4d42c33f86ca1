"""Turning uploaded bytes into the upright BGR pixels the face models expect.

Photos arrive as phones and cameras write them: rotated by an EXIF tag, as HEIC, WebP or PNG,
with alpha, in grayscale, palette or CMYK, at 16 bits per channel. Limits are checked from the
header, before any pixel is decoded, so a few kilobytes that claim 30000x30000 pixels cost
nothing.
"""

import io
import warnings

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.errors import ImageTooLarge, ImageTooSmall, UndecodableImage

pillow_heif.register_heif_opener()
# Our own pixel limit below replaces Pillow's global one, which only warns up to twice its value.
Image.MAX_IMAGE_PIXELS = None

WHITE = (255, 255, 255)


def decode_image(data: bytes, *, max_pixels: int, min_side_px: int) -> np.ndarray:
    """Decode one image to an upright HxWx3 uint8 BGR array, or raise why not."""
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")

    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as error:
        raise UndecodableImage(
            "the bytes are not an image format we read (JPEG, PNG, WebP, HEIC, TIFF, BMP, GIF)"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        # A file cut inside its header fails here already, before any pixel is read.
        raise UndecodableImage(f"the image header is damaged or truncated: {error}") from error

    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    if min(width, height) < min_side_px:
        raise ImageTooSmall(
            f"the image is {width}x{height} pixels; a side under {min_side_px} px holds no face worth matching"
        )

    try:
        image.seek(0)  # animated WebP and GIF: the first frame
        image.load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a malformed EXIF block is not worth refusing a photo
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as error:
        raise UndecodableImage(f"the image is damaged or truncated: {error}") from error

    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _scale_to_8_bit(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    # Pillow's own conversion of 16-bit gray clips (or wraps) values above 255, which leaves a
    # nearly white or noisy frame where the detector finds nothing; scale the range instead.
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode != "F" else max(float(pixels.max()), 1.0)
    if image.mode == "I" and pixels.max() <= 255:
        top = 255.0
    gray = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")
