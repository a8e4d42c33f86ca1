"""Selfie search end to end, next to the selfie's own embedding time in-process.

End to end: a `search-requested` event (the selfie inline as `image_b64`, as guests' phones send
it) is published to a real embedded Tansu broker, a real `pixora-face worker` subprocess on a
fresh embedded PostgreSQL answers it, and the `search-results` event is consumed by the product's
`EventClient`; timed from publish to consume, one request at a time, against a session holding
the labelled fixture photos. In-process: the same selfie bytes through `decode_image` and
`engine.selfie_face` (same models, every core), timed while the worker is idle.

The difference (end to end minus embedding) is what the stream, the consumer batching, the
database query and the answer's delivery add to what a guest waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.photos import FIXTURES, default_engine, small_fixtures
from bench.stack import Stack, client_for, new_session, percentile, stage, table
from faces.decoding import decode_image
from streams.settings import Settings

SELFIES = (
    "obama.jpg",
    "biden.jpg",
    "knn_train_rose_leslie_img1.jpg",
    "knn_train_kit_harington_john2.jpeg",
)


def embedding_times(selfies: list[bytes], count: int) -> list[float]:
    defaults = Settings()
    engine = default_engine()
    engine.selfie_face(
        decode_image(selfies[0], max_pixels=defaults.max_image_pixels, min_side_px=32)
    )
    times = []
    for i in range(count):
        started = time.perf_counter()
        image = decode_image(
            selfies[i % len(selfies)],
            max_pixels=defaults.max_image_pixels,
            min_side_px=defaults.min_image_side_px,
        )
        face = engine.selfie_face(image)
        times.append((time.perf_counter() - started) * 1000)
        assert face is not None
    return times


async def end_to_end(
    selfies: list[bytes], count: int
) -> tuple[list[float], list[float], dict[str, int]]:
    statuses: dict[str, int] = {}
    times: list[float] = []
    worker_ms: list[float] = []
    print("... starting broker, fresh PostgreSQL and a worker subprocess", flush=True)
    with Stack("selfie") as stack:
        # A guest's answer is consumed by a client polling like the worker does.
        async with client_for(stack, stack.settings.kafka_fetch_max_wait_ms) as client:
            session = new_session("bench-selfie")
            with stage("indexing the fixture photos into the session (also warms the worker)"):
                await stack.index(client, session, small_fixtures())
            for i in range(3):  # warm the search agent
                await stack.search(client, session, selfies[i % len(selfies)])
            with stage(f"{count} selfie searches, one at a time"):
                for i in range(count):
                    seconds, answer = await stack.search(client, session, selfies[i % len(selfies)])
                    times.append(seconds * 1000)
                    worker_ms.append(float(answer.get("took_ms") or 0.0))
                    statuses[answer["status"]] = statuses.get(answer["status"], 0) + 1
    return times, worker_ms, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 requests instead of 50")
    arguments = parser.parse_args()
    count = 20 if arguments.quick else 50
    selfies = [(FIXTURES / name).read_bytes() for name in SELFIES]

    with stage(f"{count} in-process selfie embeddings (decode + selfie_face)"):
        embed = embedding_times(selfies, count)
    e2e, worker_ms, statuses = asyncio.run(end_to_end(selfies, count))

    rows = [
        [
            "end to end (publish -> result consumed)",
            f"{percentile(e2e, 0.5):.0f}",
            f"{percentile(e2e, 0.99):.0f}",
        ],
        [
            "worker's took_ms (in the answer)",
            f"{percentile(worker_ms, 0.5):.0f}",
            f"{percentile(worker_ms, 0.99):.0f}",
        ],
        [
            "in-process decode + selfie_face",
            f"{percentile(embed, 0.5):.0f}",
            f"{percentile(embed, 0.99):.0f}",
        ],
        [
            "difference (end to end - in-process)",
            f"{percentile(e2e, 0.5) - percentile(embed, 0.5):.0f}",
            f"{percentile(e2e, 0.99) - percentile(embed, 0.99):.0f}",
        ],
    ]
    print()
    print(
        f"selfie search, {count} requests, {len(SELFIES)} selfies in turn, "
        f"session of {len(small_fixtures())} fixture photos; statuses {statuses}"
    )
    print(table(rows, ["ms", "p50", "p99"]))
    print(
        f"ratio end to end / embedding (p50): {percentile(e2e, 0.5) / percentile(embed, 0.5):.2f}"
    )


if __name__ == "__main__":
    main()
