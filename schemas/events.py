"""Event records of the Kafka topics, version 1.

Every event is JSON with a `schema_version` and is keyed by `session_id`. Incoming events are
parsed strictly (unknown versions, missing or mistyped fields are refused with a reason);
outgoing events are built from these models so their shape cannot drift.
"""

import json
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import InvalidEvent

SCHEMA_VERSION: Literal[1] = 1


# Ids end up in log lines, topic keys and primary keys; 200 characters covers UUIDs, ULIDs and
# human-readable slugs with room to spare while keeping a crafted id from bloating every row.
def _storable(text: str) -> str:
    # JSON can carry a NUL or half of a surrogate pair ("\\udcff"); neither survives UTF-8 or
    # PostgreSQL text, so such an id would fail later at the database, where it could not even
    # be dead-lettered. Refuse it here, where the reason can be given.
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"must be valid Unicode text ({error.reason} at position {error.start})"
        ) from None
    return text


Identifier = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable)]
Source = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_storable)]
BoundingBox = tuple[float, float, float, float]


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, raw: bytes | str) -> Self:
        """Parse one event, turning every contract violation into `InvalidEvent`."""
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as error:
            # RecursionError: JSON nested deeper than Python's stack (e.g. 100 000 "[").
            raise InvalidEvent(f"{cls.__name__} is not valid JSON: {_short(error)}") from error
        if not isinstance(document, dict):
            raise InvalidEvent(
                f"{cls.__name__} must be a JSON object, got {type(document).__name__}"
            )
        try:
            return cls.model_validate(document)
        except ValidationError as error:
            raise InvalidEvent(f"{cls.__name__} breaks the contract: {_describe(error)}") from error


def _short(error: Exception) -> str:
    return str(error)[:300]


def _describe(error: ValidationError) -> str:
    problems = []
    for detail in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in detail["loc"]) or "event"
        problems.append(f"{where}: {detail['msg']}")
    return "; ".join(problems)


class PhotoUploaded(_Event):
    """A photographer's photo to index."""

    event_id: Identifier
    session_id: Identifier
    photo_id: Identifier | None = None
    source: Source
    uploaded_at: datetime

    @model_validator(mode="after")
    def _derive_photo_id(self) -> Self:
        if self.photo_id is None:
            derived = photo_id_from_source(self.source)
            if not derived:
                raise ValueError(
                    f"no photo_id given and none derivable from source {self.source!r}"
                )
            object.__setattr__(self, "photo_id", derived)
        return self

    @property
    def photo(self) -> str:
        """The photo id, always present after parsing."""
        assert self.photo_id is not None
        return self.photo_id


def photo_id_from_source(source: str) -> str:
    """A photo's id when the platform gave none: the key's file name without its extension."""
    return PurePosixPath(source.rstrip("/")).stem[:200]


class SearchRequested(_Event):
    """A guest's selfie to look up in one session."""

    request_id: Identifier
    session_id: Identifier
    source: Source | None = None
    image_b64: str | None = None
    # Strict: "0.9" or true are not numbers, whatever Python would make of them.
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False, strict=True)
    limit: int | None = Field(default=None, ge=1, strict=True)

    @model_validator(mode="after")
    def _exactly_one_selfie(self) -> Self:
        if (self.source is None) == (self.image_b64 is None):
            raise ValueError("give the selfie as exactly one of source or image_b64")
        return self


class FaceFound(BaseModel):
    model_config = ConfigDict(frozen=True)

    face_index: int
    bbox: BoundingBox
    det_score: float


class PhotoIndexed(_Event):
    """What indexing found in one photo."""

    event_id: str
    session_id: str
    photo_id: str
    status: Literal["indexed"] = "indexed"
    face_count: int
    faces_dropped: int = 0
    faces: list[FaceFound]
    model: str
    replayed: bool = False
    took_ms: float
    indexed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class PhotoMatch(BaseModel):
    model_config = ConfigDict(frozen=True)

    photo_id: str
    similarity: float
    bbox: BoundingBox


SearchStatus = Literal["matched", "no_match", "no_face", "invalid_request", "error"]


class SearchResults(_Event):
    """The answer to one search request."""

    request_id: str
    session_id: str
    status: SearchStatus
    matches: list[PhotoMatch] = []
    query_bbox: BoundingBox | None = None
    query_det_score: float | None = None
    threshold: float | None = None
    limit: int | None = None
    model: str | None = None
    took_ms: float
    error: str | None = None


# A dead letter must always fit a Kafka message, or publishing it would fail forever and hold
# its partition: an original longer than this is cut, and `original_bytes` says how long it was.
DEAD_LETTER_ORIGINAL_MAX_CHARS = 128 * 1024  # at most 768 KiB even if every character is escaped


class DeadLetter(_Event):
    """An event the service could not process, with everything needed to replay it."""

    topic: str
    partition: int
    offset: int
    key: str | None
    original: str
    original_bytes: int
    original_truncated: bool = False
    reason: str
    error_code: str
    attempts: int
    event_id: str | None = None
    session_id: str | None = None
    photo_id: str | None = None
    failed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def peek_field(raw: bytes, name: str) -> str | None:
    """Read one string field from an event that may be invalid, for dead-letter bookkeeping."""
    try:
        document: Any = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, str):
        return None
    return printable(value[:PEEKED_MAX_CHARS])


# A field read from an invalid event lands in a dead letter or an answer; a 5 MB "id" must not.
PEEKED_MAX_CHARS = 1024


def printable(text: str) -> str:
    """Text that any UTF-8 consumer can take: lone surrogates and NULs replaced."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
