"""Benchmark photos: the small labelled fixtures, and large camera-like photos built from them.

The fixtures in `tests/fixtures/faces/` are 0.1-4 MP; event cameras write 12-24 MP JPEGs. This
module builds such photos deterministically (same seed, same pixels) into `bench/.cache/photos/`:

- a canvas of 4000x3000 (12 MP) or 6000x4000 (24 MP), made from a faceless fixture region
  (the lower part of `biden.jpg`: suit and room, the one the tests use as a faceless photo),
  upscaled, tinted and given a little sensor-like grain so the JPEG carries realistic entropy;
- several head-and-shoulders tiles cut from single-face fixtures, scaled so that the face is a
  chosen size from 40 px up, plus one whole group photo, pasted without overlap;
- saved as a quality 90 JPEG; one in three is stored rotated with EXIF Orientation=6, as a camera
  held upright writes it, so every decode path must honour EXIF.

Next to the photos, `manifest.json` records per photo the face sizes placed and the faces the
engine finds when it is given the photo decoded at full resolution (`expected_faces`): the
reference a faster decode path is checked against ("no face lost"). Face sizes placed and faces
found differ on purpose: the manifest shows which sizes the detector reaches at that resolution.

`python -m bench.photos [--quick]` builds the set and prints the manifest.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from faces.engine import FaceEngine

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "faces"
CACHE = REPO / "bench" / ".cache"
PHOTO_DIR = CACHE / "photos"
MANIFEST = PHOTO_DIR / "manifest.json"

# Bump when the pictures built change, so cached photos and their expected counts are rebuilt.
BUILDER_VERSION = 2
JPEG_QUALITY = 90
SIZES = {"12mp": (4000, 3000), "24mp": (6000, 4000)}
PHOTOS_PER_SIZE = 8  # the full set; --quick takes the first QUICK_PER_SIZE of each size
QUICK_PER_SIZE = 2
# Face sizes (the shorter side of the face box, in pixels of the built photo) drawn per photo.
FACE_SIZES_PX = (40, 56, 80, 112, 160, 224, 320, 448)
TILES_PER_PHOTO = 6
# Per-channel sensor-like noise: brings a 24 MP quality-90 JPEG to ~5-6 MB, as cameras write.
GRAIN_SIGMA = 8.0

# Single-face fixtures with a face large enough to be scaled up without turning to mush.
PORTRAITS = (
    "obama.jpg",
    "biden.jpg",
    "knn_train_biden_biden2.jpg",
    "knn_train_kit_harington_john1.jpeg",
    "knn_train_rose_leslie_img1.jpg",
    "knn_train_rose_leslie_img2.jpg",
    "knn_train_alex_lacamoire_img1.jpg",
    "knn_test_johnsnow_test1.jpg",
    "knn_test_obama1.jpg",
    "lin-manuel-miranda.png",
)
GROUPS = ("two_people.jpg", "knn_test_kit_with_rose.jpg", "knn_test_obama_and_biden.jpg")
BACKGROUND = ("biden.jpg", (1500, 2100, 0, 900))  # rows, columns: no face in it


def small_fixtures() -> list[Path]:
    """The labelled fixture photos, in labels.csv order."""
    with (FIXTURES / "labels.csv").open() as table:
        return [FIXTURES / row["file"] for row in csv.DictReader(table)]


@dataclass(frozen=True)
class BuiltPhoto:
    name: str
    file: str  # relative to the repository root
    width: int  # upright
    height: int
    bytes: int
    exif_orientation: int
    placed_face_px: list[int]  # tiles; the group photo's faces are not in this list
    group: str
    expected_faces: int  # engine.index_photo on the full-resolution decode
    expected_dropped: int
    expected_face_px: list[int]  # shorter side of each face found, largest first
    model: str

    @property
    def path(self) -> Path:
        return REPO / self.file

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def large_photos(quick: bool = False, engine: FaceEngine | None = None) -> list[BuiltPhoto]:
    """The 12 and 24 MP photos (built on first use), 12 MP ones first."""
    per_size = QUICK_PER_SIZE if quick else PHOTOS_PER_SIZE
    names = [f"{size}-{index:02d}" for size in SIZES for index in range(per_size)]
    manifest = _read_manifest()
    missing = [
        name
        for name in names
        if name not in manifest or not (REPO / manifest[name]["file"]).is_file()
    ]
    if missing:
        if engine is None:
            engine = default_engine()
        PHOTO_DIR.mkdir(parents=True, exist_ok=True)
        for name in missing:
            started = time.perf_counter()
            manifest[name] = asdict(_build(name, engine))
            print(
                f"  built {name}: {manifest[name]['bytes'] / 1e6:.1f} MB, "
                f"{manifest[name]['expected_faces']} faces found of "
                f"{len(manifest[name]['placed_face_px'])} tiles + group "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
            _write_manifest(manifest)
    return [BuiltPhoto(**manifest[name]) for name in names]


def default_engine() -> FaceEngine:
    """The product's engine, as a worker builds it, on every core (ONNX_THREADS=0)."""
    from streams.app import build_engine
    from streams.settings import Settings

    return build_engine(Settings(onnx_threads=0))


def _read_manifest() -> dict[str, dict[str, object]]:
    try:
        document = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    if document.get("builder_version") != BUILDER_VERSION:
        return {}
    photos: dict[str, dict[str, object]] = document.get("photos", {})
    return photos


def _write_manifest(photos: dict[str, dict[str, object]]) -> None:
    MANIFEST.write_text(
        json.dumps({"builder_version": BUILDER_VERSION, "photos": photos}, indent=1) + "\n"
    )


def _read_rgb(name: str) -> np.ndarray:
    image = Image.open(FIXTURES / name)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    resample = Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(rgb).resize((max(1, width), max(1, height)), resample))


def _largest_face(engine: FaceEngine, rgb: np.ndarray) -> tuple[float, float, float, float]:
    faces = engine.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    if not faces:
        raise RuntimeError("a portrait fixture shows no face to the engine")
    return faces[0].bbox


_face_boxes: dict[str, tuple[float, float, float, float]] = {}


def _portrait_tile(engine: FaceEngine, name: str, face_px: int) -> np.ndarray:
    """A head-and-shoulders square around the fixture's face, scaled so the face is face_px."""
    rgb = _read_rgb(name)
    if name not in _face_boxes:
        _face_boxes[name] = _largest_face(engine, rgb)
    x1, y1, x2, y2 = _face_boxes[name]
    side = min(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = side * 1.4
    height, width = rgb.shape[:2]
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(width, cx + half)), int(min(height, cy + half * 1.3))
    crop = rgb[top:bottom, left:right]
    scale = face_px / side
    return _resize(crop, round(crop.shape[1] * scale), round(crop.shape[0] * scale))


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    source, (r1, r2, c1, c2) = BACKGROUND
    region = _read_rgb(source)[r1:r2, c1:c2]
    if rng.random() < 0.5:
        region = region[:, ::-1]
    canvas = _resize(np.ascontiguousarray(region), width, height).astype(np.float32)
    tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    grain = rng.normal(0.0, GRAIN_SIGMA, size=(height, width, 3)).astype(np.float32)
    return np.clip(canvas * tint + grain, 0, 255).astype(np.uint8)


def _paste(
    canvas: np.ndarray,
    tile: np.ndarray,
    taken: list[tuple[int, int, int, int]],
    rng: np.random.Generator,
) -> bool:
    height, width = canvas.shape[:2]
    th, tw = tile.shape[:2]
    if th >= height or tw >= width:
        return False
    for _ in range(200):
        x, y = int(rng.integers(0, width - tw)), int(rng.integers(0, height - th))
        box = (x, y, x + tw, y + th)
        if all(box[2] <= a or box[0] >= c or box[3] <= b or box[1] >= d for a, b, c, d in taken):
            canvas[y : y + th, x : x + tw] = tile
            taken.append(box)
            return True
    return False


def _build(name: str, engine: FaceEngine) -> BuiltPhoto:
    from faces.decoding import decode_image

    size, index = name.split("-")
    width, height = SIZES[size]
    seed = BUILDER_VERSION * 1_000_003 + list(SIZES).index(size) * 1000 + int(index)
    rng = np.random.default_rng(seed)
    canvas = _background(rng, width, height)
    taken: list[tuple[int, int, int, int]] = []

    # The group photo first (it is the largest), scaled to a third of the canvas height.
    group = GROUPS[int(index) % len(GROUPS)]
    group_rgb = _read_rgb(group)
    scale = height / 3 / group_rgb.shape[0]
    group_tile = _resize(
        group_rgb, round(group_rgb.shape[1] * scale), round(group_rgb.shape[0] * scale)
    )
    _paste(canvas, group_tile, taken, rng)

    placed: list[int] = []
    sizes = sorted(rng.choice(FACE_SIZES_PX, size=TILES_PER_PHOTO, replace=True), reverse=True)
    for face_px in sizes:
        portrait = PORTRAITS[int(rng.integers(0, len(PORTRAITS)))]
        if _paste(canvas, _portrait_tile(engine, portrait, int(face_px)), taken, rng):
            placed.append(int(face_px))

    upright = Image.fromarray(canvas)
    orientation = 6 if int(index) % 3 == 1 else 1
    stored = upright.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "Pixora bench"  # Make
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    data = buffer.getvalue()
    path = PHOTO_DIR / f"{name}.jpg"
    path.write_bytes(data)

    decoded = decode_image(data, max_pixels=10**9, min_side_px=1)
    assert decoded.shape[:2] == (height, width), "EXIF orientation must restore the upright shape"
    found = engine.index_photo(decoded)
    return BuiltPhoto(
        name=name,
        file=str(path.relative_to(REPO)),
        width=width,
        height=height,
        bytes=len(data),
        exif_orientation=orientation,
        placed_face_px=placed,
        group=group,
        expected_faces=len(found.faces),
        expected_dropped=found.dropped,
        expected_face_px=[
            round(min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1])) for f in found.faces
        ],
        model=engine.model,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the photos --quick runs use")
    arguments = parser.parse_args()
    photos = large_photos(quick=arguments.quick)
    print(f"{'photo':10} {'size':>9} {'MB':>5} {'exif':>4} {'faces placed (px)':32} found (px)")
    for photo in photos:
        placed = ",".join(map(str, photo.placed_face_px)) + f" +{photo.group.split('.')[0]}"
        found = ",".join(map(str, photo.expected_face_px))
        print(
            f"{photo.name:10} {photo.width}x{photo.height} {photo.bytes / 1e6:5.1f} "
            f"{photo.exif_orientation:>4} {placed:32} {photo.expected_faces}: {found}"
        )


if __name__ == "__main__":
    main()
