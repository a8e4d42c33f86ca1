"""Capped exponential backoff with jitter for faults that are worth retrying."""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from schemas.errors import PixoraError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_attempts: int | None = None  # None: until it works; the partition waits, nothing is skipped

    def delay_s(self, attempt: int) -> float:
        # Full jitter: workers that lost the database together do not come back in lockstep.
        ceiling = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


async def retry_transient(action: Callable[[], Awaitable[T]], what: str, backoff: Backoff) -> T:
    """Run `action`, retrying the faults marked retriable; raise the rest, and the last one."""
    attempt = 1
    while True:
        try:
            return await action()
        except PixoraError as error:
            if not error.retriable or (
                backoff.max_attempts is not None and attempt >= backoff.max_attempts
            ):
                raise
            delay = backoff.delay_s(attempt)
            log.warning(
                "%s failed (attempt %d), retrying in %.1f s: %s", what, attempt, delay, error
            )
            await asyncio.sleep(delay)
            attempt += 1
