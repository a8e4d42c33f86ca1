"""Publishing test events through the real broker and collecting the worker's answers."""

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

from streams.client import Answer, EventClient

ANSWER_TIMEOUT_S = 120.0


def upload(session_id: str, source: str, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "session_id": session_id,
        "photo_id": source.rsplit("/", 1)[-1].rsplit(".", 1)[0],
        "source": source,
        "uploaded_at": datetime.now(UTC).isoformat(),
    }
    event.update(fields)
    return event


async def index(client: EventClient, events: list[dict[str, Any]]) -> dict[str, Answer]:
    """Publish uploads; return each event id's answer (photo-indexed or dead letter)."""
    found = await client.upload(events, ANSWER_TIMEOUT_S)
    assert len(found) == len(events), f"{len(events) - len(found)} upload(s) got no answer"
    return found


async def search(
    client: EventClient, session_id: str, selfie: bytes | None, **fields: Any
) -> dict[str, Any]:
    """Publish a search (the selfie inline unless None) and return its search-results event."""
    request: dict[str, Any] = {
        "schema_version": 1,
        "request_id": str(uuid.uuid4()),
        "session_id": session_id,
    }
    if selfie is not None:
        request["image_b64"] = base64.b64encode(selfie).decode()
    request.update(fields)
    found = await client.search([request], ANSWER_TIMEOUT_S)
    assert request["request_id"] in found, "the search got no answer"
    return found[request["request_id"]]
