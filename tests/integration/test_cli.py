"""The `pixora-face demo` command-line contract, run as a user would run it."""

import json
import shutil
import subprocess
import sys
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
