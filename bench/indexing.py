"""Indexing throughput: the whole pipeline against the bare work, and the product path against naive.

Three paths index the same files, one after the other in this run, with the same models:

- **pipeline**: one `photo-uploaded` event per photo published to a real embedded Tansu broker; a
  real `pixora-face worker` subprocess (`WorkerProcess`, default batch size and settings, every
  core) on a fresh embedded PostgreSQL fetches, decodes, detects, embeds, commits the rows and
  publishes `photo-indexed`. Timed from the first publish to the last answer (an answer is sent
  only after its batch is committed; the committed row count is checked afterwards).
- **bare**: an in-process loop that reads each file, decodes it with the product's decoder
  (`faces.decoding.decode_image`) and runs `engine.index_photo` on every core
  (`OnnxRuntime(threads=0)` via `build_engine`), nothing else. It follows whatever the product's
  decoder does, so when the product learns to decode large JPEGs at reduced size, so does this.
- **naive**: full-resolution decode with Pillow + EXIF transpose + `engine.index_photo`, one
  photo at a time: the reference a smarter decode is measured against. Today it is what the
  product does, so product/naive is ~1.0.

Reported per photo set (the small labelled fixtures; the 12 and 24 MP photos of bench/photos.py):
photos/s and faces/s of each path, faces found (with how many photos differ from the reference:
the manifest's full-resolution count for the large photos, the naive path for the fixtures, so a
faster path that loses a face shows up), the decode share of the bare loop, and the ratios
pipeline/bare (what the stream, the database and the batching cost) and product/naive (what the
product's decode wins over the naive one).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.photos import default_engine, large_photos, small_fixtures
from bench.stack import Stack, client_for, new_session, stage, table
from faces.decoding import EncodedPhoto
from faces.engine import FaceEngine, PhotoFaces
from streams.settings import Settings

DEFAULTS = Settings()
# Sessions per pipeline burst: a stream's throughput is its steady rate, and the fixed latency
# of one burst (batch window, broker fetches) would otherwise weigh on a few seconds of work.
PIPELINE_PASSES = 6


def naive_faces(engine: FaceEngine, data: bytes) -> tuple[PhotoFaces, float]:
    """Full-resolution Pillow decode, EXIF transpose, BGR, index_photo. Kept naive on purpose."""
    started = time.perf_counter()
    image = Image.open(io.BytesIO(data))
    image.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    decoded = time.perf_counter()
    return engine.index_photo(pixels), decoded - started


def product_faces(engine: FaceEngine, data: bytes) -> tuple[PhotoFaces, float | None]:
    """What a worker does per photo: the header checked against the limits, then
    `index_encoded`, which decodes only as much of the photo as detection and recognition need
    (decode and inference interleave there, so no separate decode time is reported)."""
    photo = EncodedPhoto(
        data, max_pixels=DEFAULTS.max_image_pixels, min_side_px=DEFAULTS.min_image_side_px
    )
    return engine.index_encoded(photo), None


@dataclass
class PathResult:
    seconds: float
    faces: dict[str, int]  # photo_id -> faces indexed
    decode_s: float | None = None
    dead: list[str] = field(default_factory=list)

    def photos_per_s(self) -> float:
        return len(self.faces) / self.seconds

    def faces_per_s(self) -> float:
        return sum(self.faces.values()) / self.seconds


def run_loops(
    engine: FaceEngine,
    paths: Sequence[Path],
    repeats: int,
    works: dict[str, Callable[[FaceEngine, bytes], tuple[PhotoFaces, float | None]]],
) -> dict[str, PathResult]:
    """Each path on each photo in turn, alternating their order, `repeats` times; mean per pass.

    Interleaving keeps slow drift (page cache, allocator, a noisy neighbour) out of the ratio.
    """
    for work in works.values():
        work(engine, paths[0].read_bytes())  # warm: first ONNX Runtime calls allocate
    seconds = dict.fromkeys(works, 0.0)
    decode = dict.fromkeys(works, 0.0)
    faces: dict[str, dict[str, int]] = {name: {} for name in works}
    order = list(works)
    for repeat in range(repeats):
        for index, path in enumerate(paths):
            for name in order if (repeat + index) % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                found, decode_s = works[name](engine, path.read_bytes())
                seconds[name] += time.perf_counter() - started
                if decode_s is not None:
                    decode[name] += decode_s
                faces[name][path.stem] = len(found.faces)
    return {
        name: PathResult(seconds[name] / repeats, faces[name], decode[name] / repeats or None)
        for name in works
    }


async def run_interleaved(
    engine: FaceEngine, sets: dict[str, list[Path]], rounds: int
) -> tuple[dict[str, PathResult], dict[str, PathResult], dict[str, PathResult]]:
    """naive, bare and pipeline results per set, measured in alternating rounds.

    Each round runs one naive+bare pass in this process while the worker and the broker are
    paused (SIGSTOP: they take no CPU, as if absent), then one pipeline burst of
    PIPELINE_PASSES sessions. Alternating keeps the machine's drift out of pipeline/bare as
    the photo-by-photo alternation keeps it out of bare/naive.
    """
    naive: dict[str, PathResult] = {}
    bare: dict[str, PathResult] = {}
    pipeline: dict[str, PathResult] = {}
    print("... starting broker, fresh PostgreSQL and a worker subprocess", flush=True)
    # A long group session, so that a worker paused through a pass stays in its group.
    with Stack("indexing", KAFKA_SESSION_TIMEOUT_S="40") as stack:
        async with client_for(stack) as client:
            with stage("warming the worker (consumer group join, model load)"):
                await stack.index(client, new_session("bench-warm"), small_fixtures()[:1])
            for name, paths in sets.items():
                # Warm on the set's first photo, untimed, in both processes.
                await stack.index(client, new_session(f"bench-warm-{name}"), paths[:1])
                loops: dict[str, list[PathResult]] = {"naive": [], "bare": []}
                bursts: list[PathResult] = []
                for round_ in range(rounds):
                    title = f"{name}, round {round_ + 1}/{rounds}: naive and bare, one pass"
                    with stage(title), stack.paused():
                        passes = run_loops(
                            engine, paths, 1, {"naive": naive_faces, "bare": product_faces}
                        )
                    for label, result in passes.items():
                        loops[label].append(result)
                    sessions = [
                        new_session(f"bench-{name}-{round_}-{n}") for n in range(PIPELINE_PASSES)
                    ]
                    with stage(
                        f"{name}, round {round_ + 1}/{rounds}: pipeline, x{PIPELINE_PASSES}"
                    ):
                        run = await stack.index(client, sessions, paths)
                    committed = sum([await stack.committed_photos(s) for s in sessions])
                    if committed != PIPELINE_PASSES * len(paths) - len(run.dead_letters):
                        raise RuntimeError(
                            f"{committed} photos committed of {len(sessions) * len(paths)}"
                        )
                    bursts.append(
                        PathResult(
                            run.seconds / PIPELINE_PASSES,
                            {photo: int(doc["face_count"]) for photo, doc in run.answers.items()},
                            dead=sorted(run.dead_letters),
                        )
                    )
                naive[name], bare[name] = merged(loops["naive"]), merged(loops["bare"])
                pipeline[name] = merged(bursts)
    return naive, bare, pipeline


def merged(results: list[PathResult]) -> PathResult:
    """The mean pass of several."""
    decode = [result.decode_s for result in results if result.decode_s is not None]
    return PathResult(
        sum(result.seconds for result in results) / len(results),
        results[-1].faces,
        sum(decode) / len(decode) if decode else None,
        dead=sorted({photo for result in results for photo in result.dead}),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    arguments = parser.parse_args()

    engine = default_engine()
    with stage("building or reading the large photos"):
        built = large_photos(quick=arguments.quick, engine=engine)
    fixtures = small_fixtures()
    if arguments.quick:
        fixtures = fixtures[:10]
    sets = {
        "fixtures": fixtures,
        "12mp": [photo.path for photo in built if photo.name.startswith("12mp")],
        "24mp": [photo.path for photo in built if photo.name.startswith("24mp")],
    }
    expected = {photo.name: photo.expected_faces for photo in built}

    rounds = 2 if arguments.quick else 3
    naive, bare, pipeline = asyncio.run(run_interleaved(engine, sets, rounds))

    rows = []
    ratios = []
    for name, paths in sets.items():
        reference = (
            naive[name].faces if name == "fixtures" else {p.stem: expected[p.stem] for p in paths}
        )
        for label, result in (
            ("naive", naive[name]),
            ("bare (product decode)", bare[name]),
            ("pipeline", pipeline[name]),
        ):
            differ = sum(
                1 for photo, count in reference.items() if result.faces.get(photo) != count
            )
            share = f"{100 * result.decode_s / result.seconds:.0f}%" if result.decode_s else "-"
            rows.append(
                [
                    f"{name} ({len(paths)})" if label == "naive" else "",
                    label,
                    f"{result.photos_per_s():.2f}",
                    f"{result.faces_per_s():.1f}",
                    sum(result.faces.values()),
                    f"{sum(reference.values())}",
                    differ + len(result.dead),
                    share,
                ]
            )
        ratios.append(
            [
                name,
                f"{pipeline[name].photos_per_s() / bare[name].photos_per_s():.2f}",
                f"{bare[name].photos_per_s() / naive[name].photos_per_s():.2f}",
            ]
        )
    print()
    print(
        table(
            rows,
            ["set (photos)", "path", "photos/s", "faces/s", "faces", "ref", "differ", "decode"],
        )
    )
    print()
    print(table(ratios, ["set", "pipeline/bare", "product/naive"]))
    print(
        "\nratios are throughputs (photos/s) measured in this run; pipeline/bare < 1 is what the"
        "\nstream, database and batching cost; product/naive > 1 is what the product's decode wins."
        "\nref: faces expected (manifest, full-resolution engine run; fixtures: the naive path);"
        "\ndiffer: photos whose face count differs from ref (or dead-lettered); decode: its share."
    )


if __name__ == "__main__":
    main()
