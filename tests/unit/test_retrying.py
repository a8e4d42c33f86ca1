"""Retrying transient faults with capped, jittered backoff; permanent faults pass straight through."""

import random
from collections.abc import Sequence

import pytest

from agents.retrying import Backoff, retry_transient
from schemas.errors import (
    PhotoNotFound,
    PixoraError,
    SourceUnavailable,
    StorageUnavailable,
    UndecodableImage,
)

FAST = Backoff(first_delay_s=0.001, max_delay_s=0.002)


class Flaky:
    """Fails with the given errors in turn, then answers `result`."""

    def __init__(self, errors: Sequence[Exception], result: str = "done") -> None:
        self.errors = list(errors)
        self.result = result
        self.attempts = 0

    async def __call__(self) -> str:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


async def test_a_retriable_error_is_retried_until_success() -> None:
    action = Flaky(
        [SourceUnavailable("timeout"), StorageUnavailable("restarting"), SourceUnavailable("5xx")]
    )

    result = await retry_transient(action, "fetching", FAST)

    assert result == "done"
    assert action.attempts == 4


async def test_success_on_the_first_attempt_runs_the_action_once() -> None:
    action = Flaky([])

    result = await retry_transient(action, "fetching", FAST)

    assert result == "done"
    assert action.attempts == 1


@pytest.mark.parametrize(
    "error", [PhotoNotFound("gone"), UndecodableImage("junk"), PixoraError("named")]
)
async def test_a_permanent_error_is_never_retried(error: PixoraError) -> None:
    action = Flaky([error])

    with pytest.raises(type(error)) as raised:
        await retry_transient(action, "fetching", FAST)

    assert raised.value is error
    assert action.attempts == 1


async def test_a_permanent_error_after_transient_ones_stops_the_retries() -> None:
    permanent = PhotoNotFound("gone")
    action = Flaky([SourceUnavailable("timeout"), permanent, SourceUnavailable("never reached")])

    with pytest.raises(PhotoNotFound) as raised:
        await retry_transient(action, "fetching", FAST)

    assert raised.value is permanent
    assert action.attempts == 2


async def test_an_error_outside_our_hierarchy_is_never_retried() -> None:
    action = Flaky([RuntimeError("bug")])

    with pytest.raises(RuntimeError, match="bug"):
        await retry_transient(action, "fetching", FAST)

    assert action.attempts == 1


async def test_it_gives_up_after_max_attempts_re_raising_the_last_error() -> None:
    errors = [SourceUnavailable(f"timeout {number}") for number in range(1, 6)]
    action = Flaky(errors)
    backoff = Backoff(first_delay_s=0.001, max_delay_s=0.002, max_attempts=3)

    with pytest.raises(SourceUnavailable) as raised:
        await retry_transient(action, "fetching", backoff)

    assert str(raised.value) == "timeout 3"
    assert action.attempts == 3


async def test_max_attempts_of_one_never_retries() -> None:
    action = Flaky([SourceUnavailable("timeout")])
    backoff = Backoff(first_delay_s=0.001, max_delay_s=0.002, max_attempts=1)

    with pytest.raises(SourceUnavailable):
        await retry_transient(action, "fetching", backoff)

    assert action.attempts == 1


async def test_success_on_the_last_allowed_attempt_is_returned() -> None:
    action = Flaky([SourceUnavailable("a"), SourceUnavailable("b")], result="third time")
    backoff = Backoff(first_delay_s=0.001, max_delay_s=0.002, max_attempts=3)

    result = await retry_transient(action, "fetching", backoff)

    assert result == "third time"
    assert action.attempts == 3


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5])
def test_delay_stays_between_half_the_ceiling_and_the_ceiling(attempt: int) -> None:
    backoff = Backoff(first_delay_s=0.5, max_delay_s=30.0)
    ceiling = 0.5 * 2 ** (attempt - 1)
    random.seed(attempt)

    delays = [backoff.delay_s(attempt) for _ in range(500)]

    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert max(delays) - min(delays) > ceiling / 4  # jittered, not a constant


@pytest.mark.parametrize("attempt", [7, 8, 20, 100])
def test_delay_is_capped_at_max_delay(attempt: int) -> None:
    backoff = Backoff(first_delay_s=0.5, max_delay_s=30.0)
    random.seed(attempt)

    delays = [backoff.delay_s(attempt) for _ in range(500)]

    assert all(15.0 <= delay <= 30.0 for delay in delays)


def test_the_ceiling_doubles_each_attempt() -> None:
    backoff = Backoff(first_delay_s=1.0, max_delay_s=1000.0)
    random.seed(3)

    largest = [max(backoff.delay_s(attempt) for _ in range(300)) for attempt in (1, 2, 3, 4)]

    assert largest == pytest.approx([1.0, 2.0, 4.0, 8.0], rel=0.01)


def test_the_default_backoff_retries_forever() -> None:
    backoff = Backoff()

    assert backoff.max_attempts is None
    assert backoff.first_delay_s == 0.5
    assert backoff.max_delay_s == 30.0
