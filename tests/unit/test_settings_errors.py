"""A bad setting stops the command with a one-line reason that names it as the environment does."""

import pytest

from streams.cli import main


def test_bad_settings_are_named_in_one_line_without_their_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEARCH_PARALLEL_SCANS", "0")
    monkeypatch.setenv("DATABASE_COMMAND_TIMEOUT_S", "soon-ish-secret")

    assert main(["migrate"]) == 2

    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert message.startswith("pixora-face: invalid settings: ")
    assert "SEARCH_PARALLEL_SCANS: Input should be greater than or equal to 1" in message
    assert "DATABASE_COMMAND_TIMEOUT_S: Input should be a valid number" in message
    assert "soon-ish-secret" not in message
    assert "Traceback" not in message
