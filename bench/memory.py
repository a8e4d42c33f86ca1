"""Peak memory of a worker indexing 12-24 MP photos, with the default batch size and model.

A real `pixora-face worker` subprocess (default settings: INDEXING_BATCH_SIZE=10, the default
model, every core) on a fresh embedded PostgreSQL and Tansu broker first indexes one small
fixture (models loaded, consumer joined: the baseline), then every 12 and 24 MP photo of
bench/photos.py in one session. Its peak resident set (VmHWM in /proc/PID/status) is read after
the baseline and again at the end, before the worker stops; VmRSS is sampled meanwhile.

Why: a decoded 24 MP frame is 72 MB of BGR pixels, and each extra copy a decode path makes costs
as much again; the peak is what sizes a worker's container memory limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bench.photos import large_photos, small_fixtures
from bench.stack import Stack, client_for, new_session, proc_status, stage, table
from streams.settings import Settings


async def sample_rss(pid: int, samples: list[int]) -> None:
    while True:
        with contextlib.suppress(OSError):
            samples.append(proc_status(pid)["VmRSS"])
        await asyncio.sleep(0.05)


async def measure(quick: bool) -> None:
    photos = large_photos(quick=quick)
    largest = max(photo.width * photo.height for photo in photos)
    print("... starting broker, fresh PostgreSQL and a worker subprocess", flush=True)
    with Stack("memory") as stack:
        async with client_for(stack) as client:
            with stage("baseline: one small fixture (models loaded, consumer joined)"):
                await stack.index(client, new_session("bench-mem-warm"), small_fixtures()[:1])
            baseline = proc_status(stack.worker_pid)
            samples: list[int] = []
            sampler = asyncio.create_task(sample_rss(stack.worker_pid, samples))
            try:
                with stage(f"indexing {len(photos)} photos of 12-24 MP"):
                    run = await stack.index(
                        client, new_session("bench-mem"), [photo.path for photo in photos]
                    )
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            end = proc_status(stack.worker_pid)
    mib = 1024
    settings = Settings()
    rows = [
        ["after baseline", f"{baseline['VmRSS'] / mib:.0f}", f"{baseline['VmHWM'] / mib:.0f}"],
        ["after the large photos", f"{end['VmRSS'] / mib:.0f}", f"{end['VmHWM'] / mib:.0f}"],
        ["peak growth", "", f"{(end['VmHWM'] - baseline['VmHWM']) / mib:.0f}"],
    ]
    print()
    print(
        f"worker memory, {len(photos)} photos ({run.faces} faces, {len(run.dead_letters)} dead "
        f"letters), INDEXING_BATCH_SIZE={settings.indexing_batch_size}, FACE_MODEL="
        f"{settings.face_model}"
    )
    print(table(rows, ["MiB", "VmRSS", "VmHWM"]))
    frame = largest * 3 / 2**20
    peak = (end["VmHWM"] - baseline["VmHWM"]) / mib
    print(
        f"largest photo {largest / 1e6:.0f} MP = {frame:.0f} MiB as one BGR frame; "
        f"peak growth = {peak / frame:.1f} frames; max sampled VmRSS "
        f"{max(samples, default=0) / mib:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 photos of each size")
    asyncio.run(measure(parser.parse_args().quick))


if __name__ == "__main__":
    main()
