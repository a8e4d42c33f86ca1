"""Shared pieces of the benchmarks: the embedded stack, uploads, searches, statistics, tables.

`Stack` starts what the product's own tests start: a Tansu broker on loopback, a fresh embedded
PostgreSQL under `bench/.cache/runs/`, and a real `pixora-face worker` subprocess through
`streams.embedded.WorkerProcess`, with `PHOTO_ROOT` at the repository root so that a photo's
source is its path relative to the repository. Everything it starts is stopped, and its run folder
removed, on the way out.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.photos import CACHE, REPO

RUNS = CACHE / "runs"
ANSWER_TIMEOUT_S = 300.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the largest but none)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(cell) for cell in header]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def source_of(path: Path) -> str:
    """A photo's `source` for the worker: its path under PHOTO_ROOT (the repository root)."""
    return str(path.resolve().relative_to(REPO))


def upload_event(session_id: str, path: Path, photo_id: str | None = None) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "session_id": session_id,
        "photo_id": photo_id or path.stem,
        "source": source_of(path),
        "uploaded_at": datetime.now(UTC).isoformat(),
    }


def search_request(session_id: str, selfie: bytes) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "session_id": session_id,
        "image_b64": base64.b64encode(selfie).decode(),
    }


@dataclass
class IndexRun:
    seconds: float
    answers: dict[str, dict[str, Any]]  # photo_id -> photo-indexed document
    dead_letters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def faces(self) -> int:
        return sum(int(doc.get("face_count", 0)) for doc in self.answers.values())


def new_session(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


CLIENT_FETCH_MAX_WAIT_MS = 250


class Stack:
    """Broker + fresh PostgreSQL + one worker subprocess; use as a context manager."""

    def __init__(self, name: str, **worker_env: str) -> None:
        self.run_dir = RUNS / f"{name}-{os.getpid()}"
        self.worker_env = worker_env
        self._exit = contextlib.ExitStack()
        self.settings: Any = None
        self.worker: Any = None
        self.broker: Any = None
        self.database_url = ""

    def __enter__(self) -> Stack:
        from pydantic import SecretStr

        from streams.embedded import EmbeddedBroker, EmbeddedDatabase, WorkerProcess
        from streams.settings import Settings

        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self._exit.callback(shutil.rmtree, self.run_dir, True)
        try:
            database = EmbeddedDatabase.start((self.run_dir / "postgres").resolve())
            self._exit.callback(database.stop)
            broker = EmbeddedBroker.start(self.run_dir / "tansu.log")
            self._exit.callback(broker.stop)
            self.broker = broker
            self.database_url = database.url
            self.settings = Settings(
                kafka_broker_url=broker.url,
                vector_database_url=SecretStr(database.url),
                photo_root=REPO,
                data_dir=self.run_dir / "var",
            )
            (self.run_dir / "var").mkdir()
            self.worker = WorkerProcess.start(
                self.settings, self.run_dir / "worker.log", **self.worker_env
            )
            self._exit.callback(self._stop_worker)
        except BaseException:
            self._exit.close()
            raise
        return self

    def _stop_worker(self) -> None:
        self.worker.stop()
        if self.worker.process.returncode not in (0, -15):
            print(f"worker exited with {self.worker.process.returncode}; its log ends:")
            print(self.worker.log()[-3000:])

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The worker and the broker stopped (SIGSTOP) for the block: no CPU of theirs, no
        polling, as if they were not there; they carry on afterwards."""
        pids = [self.worker.process.pid, self.broker.process.pid]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    @property
    def worker_pid(self) -> int:
        pid: int = self.worker.process.pid
        return pid

    def check_worker(self) -> None:
        if self.worker.process.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.worker.process.returncode}:\n{self.worker.log()[-3000:]}"
            )

    async def index(
        self, client: Any, session_id: str | Sequence[str], paths: Sequence[Path]
    ) -> IndexRun:
        """Publish one upload per path (per session, when several are given, all published
        before the first answer is awaited); time first publish to the last answer's send."""
        sessions = [session_id] if isinstance(session_id, str) else list(session_id)
        events = [upload_event(session, path) for session in sessions for path in paths]
        wanted = {event["event_id"] for event in events}
        started = time.time()
        found = await client.upload(events, ANSWER_TIMEOUT_S)
        # Up to the moment the worker sent its last answer (the record's timestamp, same
        # clock): how soon this client polls for answers is not what is measured.
        seconds = max((answer.produced_at for answer in found.values()), default=started) - started
        self.check_worker()
        if set(found) != wanted:
            raise RuntimeError(f"{len(wanted) - len(found)} upload(s) got no answer in time")
        run = IndexRun(seconds, {})
        for answer in found.values():
            document = answer.document
            if answer.topic == client.topics.photo_indexed:
                run.answers[document["photo_id"]] = document
            else:
                run.dead_letters[str(document.get("photo_id"))] = document
        return run

    async def committed_photos(self, session_id: str) -> int:
        import asyncpg

        connection = await asyncpg.connect(self.database_url)
        try:
            count: int = await connection.fetchval(
                "SELECT count(*) FROM photos WHERE session_id = $1", session_id
            )
        finally:
            await connection.close()
        return count

    async def search(
        self, client: Any, session_id: str, selfie: bytes
    ) -> tuple[float, dict[str, Any]]:
        """One selfie search: seconds from publishing the request to consuming its result."""
        request = search_request(session_id, selfie)
        started = time.perf_counter()
        found = await client.search([request], ANSWER_TIMEOUT_S)
        seconds = time.perf_counter() - started
        if request["request_id"] not in found:
            self.check_worker()
            raise RuntimeError("a search got no answer in time")
        return seconds, found[request["request_id"]]


def client_for(stack: Stack, fetch_max_wait_ms: int = CLIENT_FETCH_MAX_WAIT_MS) -> Any:
    """The benchmark's own producer and consumer. Tansu holds every empty fetch for the
    consumer's whole wait and spends CPU on each one, on the same two cores as the worker; a
    client that only collects answers polls less often than a worker (which must answer
    searches quickly), so that it loads the measured stack less."""
    from streams.client import EventClient

    return EventClient(
        stack.settings.model_copy(update={"kafka_fetch_max_wait_ms": fetch_max_wait_ms})
    )


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process in KiB, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    started = time.perf_counter()
    print(f"... {what}", flush=True)
    yield
    print(f"    done in {time.perf_counter() - started:.1f} s", flush=True)
