"""The `pixora-face demo` command-line contract, run as a user would run it."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, faceless_photo

pytestmark = pytest.mark.integration


def run_demo(*arguments: str, cwd: Path) -> list[dict[str, object]]:
    finished = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--json", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return [json.loads(line) for line in finished.stdout.splitlines()]


def test_demo_json_reports_every_file_then_each_search_in_selfie_order(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("two_people.jpg", "obama2.jpg", "knn_test_kit_with_rose.jpg"):
        shutil.copy(FIXTURES / name, photos / name)
    (photos / "empty room.jpg").write_bytes(faceless_photo())
    (photos / "notes.txt").write_text("not a photo")
    selfie_obama, selfie_rose = FIXTURES / "obama.jpg", FIXTURES / "knn_train_rose_leslie_img1.jpg"

    lines = run_demo(
        "--photos",
        str(photos),
        "--selfie",
        str(selfie_obama),
        "--selfie",
        str(selfie_rose),
        "--session",
        "cli-test",
        cwd=tmp_path,
    )

    outcomes = {line["photo_id"]: line for line in lines[:5]}
    assert {photo: outcome["status"] for photo, outcome in outcomes.items()} == {
        "two_people": "indexed",
        "obama2": "indexed",
        "knn_test_kit_with_rose": "indexed",
        "empty room": "indexed",
        "notes": "dead_letter",
    }
    assert [
        outcomes[photo]["faces"]
        for photo in ("two_people", "obama2", "knn_test_kit_with_rose", "empty room")
    ] == [2, 1, 2, 0]
    assert "not an image" in str(outcomes["notes"]["reason"])

    searches = lines[5:]
    assert [search["status"] for search in searches] == ["matched", "matched"]
    assert [[match["photo_id"] for match in search["matches"]] for search in searches] == [  # type: ignore[union-attr]
        ["two_people", "obama2"],
        ["knn_test_kit_with_rose"],
    ]
    assert all(search["session_id"] == "cli-test" for search in searches)


def test_index_and_search_commands_find_a_running_embedded_worker(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("two_people.jpg", "obama2.jpg", "biden.jpg"):
        shutil.copy(FIXTURES / name, photos / name)
    environment = {
        **os.environ,
        "PIXORA_DATA_DIR": str(tmp_path / "var"),
        "PHOTO_ROOT": str(photos),
        "ONNX_THREADS": "2",
    }
    for unset in ("KAFKA_BROKER_URL", "VECTOR_DATABASE_URL", "DATABASE_URL"):
        environment.pop(unset, None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_file(tmp_path / "var" / "embedded.json", timeout_s=60)

        def command(*arguments: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "streams", *arguments],
                env=environment,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )

        indexed = command("index", str(photos), "--session", "wedding", "--json")
        found = command("search", str(FIXTURES / "obama.jpg"), "--session", "wedding", "--json")
        refused = command(
            "search", str(FIXTURES / "obama.jpg"), "--session", "wedding", "--limit", "500"
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    assert indexed.returncode == 0, indexed.stderr[-2000:]
    outcomes = [json.loads(line) for line in indexed.stdout.splitlines()]
    assert {(o["photo_id"], o["status"], o["faces"]) for o in outcomes} == {
        ("biden", "indexed", 1),
        ("obama2", "indexed", 1),
        ("two_people", "indexed", 2),
    }
    assert found.returncode == 0, found.stderr[-2000:]
    results = json.loads(found.stdout)
    assert [match["photo_id"] for match in results["matches"]] == ["two_people", "obama2"]
    assert refused.returncode == 1
    assert "SEARCH_RESULT_LIMIT=50" in refused.stdout
    assert worker.returncode == 0
    assert not (tmp_path / "var" / "embedded.json").exists(), (
        "a stopped worker withdraws its address"
    )


def _wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s:.0f} s"
        time.sleep(0.1)
