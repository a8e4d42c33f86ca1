"""The transport-neutral shape of a consumed message and of what an agent wants published."""

from dataclasses import dataclass

from schemas.errors import PixoraError
from schemas.events import (
    DEAD_LETTER_ORIGINAL_MAX_CHARS,
    PEEKED_MAX_CHARS,
    DeadLetter,
    peek_field,
    printable,
)

REASON_MAX_CHARS = 4000


@dataclass(frozen=True)
class IncomingEvent:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Publication:
    """One event to publish: its topic (by role, resolved to a name by the stream app), key and body."""

    role: str  # "photo_indexed", "dead_letter", "search_results", "search_dead_letter"
    key: str | None
    value: bytes


def dead_letter(event: IncomingEvent, error: PixoraError | Exception, attempts: int) -> DeadLetter:
    code = error.code if isinstance(error, PixoraError) else "internal_error"
    original = printable(event.value.decode("utf-8", "replace"))
    reason = printable(
        str(error) if isinstance(error, PixoraError) else f"{type(error).__name__}: {error}"
    )[:REASON_MAX_CHARS]
    return DeadLetter(
        topic=event.topic,
        partition=event.partition,
        offset=event.offset,
        key=printable(event.key.decode("utf-8", "replace"))[:PEEKED_MAX_CHARS]
        if event.key is not None
        else None,
        original=original[:DEAD_LETTER_ORIGINAL_MAX_CHARS],
        original_bytes=len(event.value),
        original_truncated=len(original) > DEAD_LETTER_ORIGINAL_MAX_CHARS,
        reason=reason,
        error_code=code,
        attempts=attempts,
        event_id=peek_field(event.value, "event_id") or peek_field(event.value, "request_id"),
        session_id=peek_field(event.value, "session_id"),
        photo_id=peek_field(event.value, "photo_id"),
    )


def dead_letter_publication(
    event: IncomingEvent,
    error: PixoraError | Exception,
    attempts: int = 1,
    role: str = "dead_letter",
) -> Publication:
    """The dead letter of `event`, ready to publish to its topic's `.dlq`."""
    return Publication(role, None, dead_letter(event, error, attempts).to_json())


def rounded_box(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A box to a tenth of a pixel: enough for drawing, and keeps events short."""
    x1, y1, x2, y2 = (round(float(value), 1) for value in bbox)
    return (x1, y1, x2, y2)
