"""Our exception hierarchy: each class says whether the fault is worth retrying.

The `retriable` flag, never a match on the message, decides between retrying with backoff
(the partition waits) and a dead letter (the partition moves on). `code` is the stable word
that dead letters and search results carry, so an operator can group failures without
parsing prose.
"""

from typing import ClassVar


class PixoraError(Exception):
    """A fault this service knows how to name."""

    retriable: ClassVar[bool] = False
    code: ClassVar[str] = "error"


class InvalidEvent(PixoraError):
    """The event is not valid JSON or breaks the event contract."""

    code = "invalid_event"


class SourceRefused(PixoraError):
    """The photo's source points somewhere this service does not read from."""

    code = "source_refused"


class PhotoNotFound(PixoraError):
    """The photo's source names nothing that exists."""

    code = "photo_not_found"


class UndecodableImage(PixoraError):
    """The bytes are not an image we can decode."""

    code = "undecodable_image"


class ImageTooLarge(PixoraError):
    """The image breaks a size limit; refused before it could exhaust memory."""

    code = "image_too_large"


class ImageTooSmall(PixoraError):
    """The image is too small to hold a face worth matching."""

    code = "image_too_small"


class SessionFull(PixoraError):
    """The session already holds MAX_PHOTOS_PER_SESSION photos."""

    code = "session_full"


class ModelUnavailable(PixoraError):
    """The face models or the execution provider asked for cannot be loaded."""

    code = "model_unavailable"


class StorageRejected(PixoraError):
    """The face database refused the rows themselves (a constraint, a malformed value)."""

    code = "storage_rejected"


class SourceUnavailable(PixoraError):
    """The photo store did not answer (timeout, 5xx, connection lost)."""

    retriable = True
    code = "source_unavailable"


class StorageUnavailable(PixoraError):
    """The face database did not answer (connection lost, server restarting)."""

    retriable = True
    code = "storage_unavailable"
