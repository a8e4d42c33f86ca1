"""Shared fixtures: the real broker, the real database, the real models, the labelled photos.

Everything is started once per test run on loopback and stopped at the end. Tests isolate
themselves by session id, never by mocking.
"""

import csv
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import SecretStr

from faces.decoding import decode_image
from faces.engine import FaceEngine
from storage.face_store import FaceStore
from streams.app import build_engine
from streams.client import EventClient
from streams.embedded import EmbeddedBroker, EmbeddedDatabase, WorkerProcess
from streams.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "faces"
# The shared worker's limits, low enough for a test to reach them; every other test stays below.
SESSION_PHOTO_LIMIT = 30
# Over it, a selfie still fits a Kafka message (1 MiB by default) once base64-encoded.
SELFIE_BYTE_LIMIT = 600_000


@dataclass(frozen=True)
class LabelledPhoto:
    file: str
    identities: frozenset[str]
    faces_expected: int

    @property
    def photo_id(self) -> str:
        return Path(self.file).stem


def labelled_photos() -> list[LabelledPhoto]:
    with (FIXTURES / "labels.csv").open() as table:
        return [
            LabelledPhoto(
                row["file"], frozenset(row["identity"].split(";")), int(row["n_faces_expected"])
            )
            for row in csv.DictReader(table)
        ]


def read_image(name: str) -> np.ndarray:
    return decode_image((FIXTURES / name).read_bytes(), max_pixels=10**8, min_side_px=32)


def faceless_photo() -> bytes:
    """A real photo without a face: the lower part of biden.jpg, his suit and the room."""
    image = read_image("biden.jpg")
    ok, encoded = cv2.imencode(".jpg", image[1500:2100, 0:900])
    assert ok
    return encoded.tobytes()


def new_session() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def engine() -> FaceEngine:
    return build_engine(Settings(onnx_threads=2))


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def database(runtime_dir: Path) -> Iterator[str]:
    embedded = EmbeddedDatabase.start(runtime_dir / "postgres")
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
def broker(runtime_dir: Path) -> Iterator[str]:
    embedded = EmbeddedBroker.start(runtime_dir / "tansu.log")
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
def photo_root(runtime_dir: Path) -> Path:
    root = runtime_dir / "photos"
    shutil.copytree(FIXTURES, root)
    (root / "faceless.jpg").write_bytes(faceless_photo())
    return root


@pytest.fixture(scope="session")
def settings(broker: str, database: str, photo_root: Path, runtime_dir: Path) -> Settings:
    return Settings(
        kafka_broker_url=broker,
        vector_database_url=SecretStr(database),
        photo_root=photo_root,
        data_dir=runtime_dir / "var",
        onnx_threads=2,
    )


def start_worker(settings: Settings, log_file: Path, **extra_env: str) -> WorkerProcess:
    return WorkerProcess.start(
        settings, log_file, **({"ONNX_THREADS": "2", "LOG_LEVEL": "INFO"} | extra_env)
    )


@pytest.fixture(scope="session")
def worker(settings: Settings, runtime_dir: Path) -> Iterator[WorkerProcess]:
    running = start_worker(
        settings,
        runtime_dir / "worker.log",
        MAX_PHOTOS_PER_SESSION=str(SESSION_PHOTO_LIMIT),
        MAX_SELFIE_BYTES=str(SELFIE_BYTE_LIMIT),
    )
    yield running
    running.stop()
    if running.process.returncode not in (0, -15):
        print(running.log()[-5000:], file=sys.stderr)


@pytest.fixture
async def client(settings: Settings, worker: WorkerProcess) -> AsyncIterator[EventClient]:
    async with EventClient(settings) as connected:
        yield connected


@pytest.fixture(scope="session")
async def store(database: str) -> AsyncIterator[FaceStore]:
    opened = await FaceStore.open(database)
    yield opened
    await opened.close()
