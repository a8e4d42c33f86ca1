"""Bad photos and bad events through the real worker: each gets a clear outcome, none stalls.

Every case is published to the same partition as a good photo sent after it, so a case that
crashed the agent or stalled its partition would also fail the good photo's assertion.
"""

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.client import Answer, EventClient
from tests import images
from tests.conftest import FIXTURES, SELFIE_BYTE_LIMIT, SESSION_PHOTO_LIMIT, new_session
from tests.integration.events import ANSWER_TIMEOUT_S, index, search, upload

pytestmark = pytest.mark.integration

# file name under the photo root, how to build it, the expected outcome: a face count or a
# dead-letter error code.
BAD_PHOTOS: list[tuple[str, Callable[[], bytes], int | str]] = [
    *[(f"orientation-{k}.jpg", lambda k=k: images.exif_rotated_jpeg(k), 1) for k in range(2, 9)],  # type: ignore[misc]
    ("phone.heic", images.heic, 1),
    ("animated.webp", images.animated_webp, 1),
    ("alpha.png", lambda: images.in_mode("RGBA"), 1),
    ("gray.png", lambda: images.in_mode("L"), 1),
    ("gray-alpha.png", lambda: images.in_mode("LA"), 1),
    ("palette.png", lambda: images.in_mode("P"), 1),
    ("print.jpg", images.cmyk_jpeg, 1),
    ("deep-gray.png", lambda: images.sixteen_bit_png(gray=True), 1),
    ("deep-colour.png", lambda: images.sixteen_bit_png(gray=False), 1),
    ("really-a-png.jpg", lambda: images.in_mode("RGB"), 1),
    ("camera-50mp.jpg", lambda: images.camera_jpeg(50), 1),
    ("truncated.jpg", images.truncated_jpeg, "undecodable_image"),
    ("empty.jpg", lambda: b"", "undecodable_image"),
    ("notes.jpg", lambda: b"these are my notes, not a photo\n", "undecodable_image"),
    ("bomb.png", images.png_bomb, "image_too_large"),
    (
        "tiny.png",
        lambda: images.encoded(images.upright().resize((20, 16)), "PNG"),
        "image_too_small",
    ),
]


@pytest.fixture(scope="module")
def bad_photo_folder(photo_root: Path) -> str:
    folder = photo_root / "bad"
    folder.mkdir()
    for name, build, _ in BAD_PHOTOS:
        (folder / name).write_bytes(build())
    return "bad"


async def test_each_bad_photo_is_indexed_upright_or_dead_lettered_with_its_reason(
    client: EventClient, bad_photo_folder: str
) -> None:
    session = new_session()
    events = [upload(session, f"{bad_photo_folder}/{name}") for name, _, _ in BAD_PHOTOS]
    events.append(upload(session, "obama.jpg"))

    answers = await index(client, events)

    outcomes = {
        event["source"].split("/")[-1]: _outcome(client, answers[event["event_id"]])
        for event in events
    }
    expected = {name: outcome for name, _, outcome in BAD_PHOTOS} | {"obama.jpg": 1}
    assert outcomes == expected
    for event in events:
        answer = answers[event["event_id"]]
        if answer.topic == client.topics.photo_uploaded_dlq:
            assert answer.document["reason"], "a dead letter says why"
            assert json.loads(answer.document["original"]) == event
            assert answer.document["attempts"] == 1


def _outcome(client: EventClient, answer: Answer) -> int | str:
    if answer.topic == client.topics.photo_indexed:
        return int(answer.document["face_count"])
    return str(answer.document["error_code"])


BAD_UPLOADS: list[tuple[str, bytes, str]] = [
    ("invalid JSON", b'{"event_id": "x", "session_id": ', "is not valid JSON"),
    ("a JSON list", b"[1, 2, 3]", "must be a JSON object"),
    (
        "no session",
        json.dumps(
            {"event_id": "e", "source": "obama.jpg", "uploaded_at": "2026-01-01T00:00:00Z"}
        ).encode(),
        "session_id",
    ),
    (
        "unknown version",
        json.dumps(
            {
                "schema_version": 7,
                "event_id": "e",
                "session_id": "s",
                "source": "obama.jpg",
                "uploaded_at": "2026-01-01T00:00:00Z",
            }
        ).encode(),
        "schema_version",
    ),
    (
        "empty id",
        json.dumps(
            {
                "event_id": "",
                "session_id": "s",
                "source": "obama.jpg",
                "uploaded_at": "2026-01-01T00:00:00Z",
            }
        ).encode(),
        "event_id",
    ),
    (
        "oversized id",
        json.dumps(
            {
                "event_id": "e",
                "session_id": "s" * 201,
                "source": "obama.jpg",
                "uploaded_at": "2026-01-01T00:00:00Z",
            }
        ).encode(),
        "session_id",
    ),
    (
        "not a date",
        json.dumps(
            {"event_id": "e", "session_id": "s", "source": "obama.jpg", "uploaded_at": "yesterday"}
        ).encode(),
        "uploaded_at",
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "reason"), BAD_UPLOADS, ids=[case for case, _, _ in BAD_UPLOADS]
)
async def test_a_malformed_upload_is_dead_lettered_with_the_original_and_the_reason(
    client: EventClient, case: str, raw: bytes, reason: str
) -> None:
    marker = uuid.uuid4().hex
    key = f"bad-{marker}".encode()

    await client.publish_raw(client.topics.photo_uploaded, key, raw)

    found = await client.answers(
        {key.decode()},
        lambda answer: (
            answer.document.get("key") if answer.topic == client.topics.photo_uploaded_dlq else None
        ),
        ANSWER_TIMEOUT_S,
    )
    letter = found[key.decode()].document
    assert letter["error_code"] == "invalid_event"
    assert reason in letter["reason"]
    assert letter["original"] == raw.decode()
    assert letter["topic"] == client.topics.photo_uploaded


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("../outside.jpg", "climbs out of the photo root"),
        ("bad/../../outside.jpg", "climbs out of the photo root"),
        ("/etc/passwd", "absolute path"),
        ("http://example.invalid/obama.jpg", "scheme is not served"),
        ("file:///etc/passwd", "scheme is not served"),
        ("s3://another-bucket/obama.jpg", "scheme is not served"),
    ],
)
async def test_a_source_outside_what_we_serve_is_refused_without_being_read(
    client: EventClient, source: str, reason: str
) -> None:
    session = new_session()

    answers = await index(client, [upload(session, source, photo_id="escape")])

    letter = next(iter(answers.values())).document
    assert letter["error_code"] == "source_refused"
    assert reason in letter["reason"]


async def test_photos_beyond_the_session_limit_are_dead_lettered_and_replays_still_pass(
    client: EventClient,
) -> None:
    session = new_session()
    full = [
        upload(session, "obama_small.jpg", photo_id=f"photo-{n:02d}")
        for n in range(SESSION_PHOTO_LIMIT)
    ]
    await index(client, full)

    one_too_many = upload(session, "obama_small.jpg", photo_id="one-too-many")
    answers = await index(client, [one_too_many, full[0]])

    over, replay = answers[one_too_many["event_id"]], answers[full[0]["event_id"]]
    assert over.document["error_code"] == "session_full"
    assert f"MAX_PHOTOS_PER_SESSION={SESSION_PHOTO_LIMIT}" in over.document["reason"]
    assert replay.topic == client.topics.photo_indexed
    assert replay.document["replayed"] is True


BAD_SEARCHES: list[tuple[str, dict[str, object], str]] = [
    (
        "both selfies",
        {"source": "obama.jpg", "image_b64": "aGk="},
        "exactly one of source or image_b64",
    ),
    ("no selfie", {}, "exactly one of source or image_b64"),
    ("threshold above 1", {"threshold": 1.5}, "threshold"),
    ("threshold below -1", {"threshold": -1.01}, "threshold"),
    ("limit zero", {"limit": 0}, "limit"),
    ("limit above cap", {"limit": 51}, "SEARCH_RESULT_LIMIT=50"),
    ("unknown version", {"schema_version": 2}, "schema_version"),
    ("not base64", {"image_b64": "***not base64***"}, "not valid base64"),
    ("not an image", {"image_b64": base64.b64encode(b"hello").decode()}, "not an image format"),
    (
        "selfie over the cap",
        {"image_b64": base64.b64encode(b"\xff" * (SELFIE_BYTE_LIMIT + 1)).decode()},
        f"MAX_SELFIE_BYTES={SELFIE_BYTE_LIMIT}",
    ),
    ("selfie path escapes", {"source": "../../etc/passwd"}, "climbs out of the photo root"),
    ("missing selfie file", {"source": "no-such-selfie.jpg"}, "does not exist"),
]


@pytest.mark.parametrize(
    ("case", "fields", "reason"), BAD_SEARCHES, ids=[case for case, _, _ in BAD_SEARCHES]
)
async def test_a_bad_search_is_answered_invalid_request_with_the_reason(
    client: EventClient, case: str, fields: dict[str, object], reason: str
) -> None:
    session = new_session()
    given_selfie = case == "no selfie" or "source" in fields or "image_b64" in fields
    selfie = None if given_selfie else (FIXTURES / "obama_small.jpg").read_bytes()

    results = await search(client, session, selfie, **fields)

    assert results["status"] == "invalid_request"
    assert reason in results["error"]
    assert results["matches"] == []


async def test_an_unparseable_search_is_answered_and_dead_lettered_for_operators(
    client: EventClient,
) -> None:
    marker = uuid.uuid4().hex
    raw = f'{{"request_id": "{marker}", "oops'.encode()

    await client.publish_raw(client.topics.search_requested, b"whatever", raw)

    found = await client.answers(
        {marker},
        lambda answer: (
            marker
            if answer.topic == client.topics.search_requested_dlq
            and marker in answer.document.get("original", "")
            else None
        ),
        ANSWER_TIMEOUT_S,
    )
    assert found[marker].document["error_code"] == "invalid_event"


HOSTILE_UPLOADS: list[tuple[str, bytes]] = [
    (
        "JSON nested 100 000 deep",
        b'{"event_id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ),
    ("6 MB of invalid UTF-8", b"\xff" * 6_000_000),
]


@pytest.mark.parametrize(
    ("case", "raw"), HOSTILE_UPLOADS, ids=[case for case, _ in HOSTILE_UPLOADS]
)
async def test_a_hostile_upload_is_dead_lettered_and_the_next_photo_still_indexed(
    client: EventClient, case: str, raw: bytes
) -> None:
    session = new_session()
    key = f"hostile-{uuid.uuid4().hex}"

    await client.publish_raw(client.topics.photo_uploaded, key.encode(), raw)
    found = await client.answers(
        {key},
        lambda answer: (
            answer.document.get("key") if answer.topic == client.topics.photo_uploaded_dlq else None
        ),
        ANSWER_TIMEOUT_S,
    )
    answers = await index(client, [upload(session, "obama_small.jpg")])

    letter = found[key].document
    assert letter["error_code"] == "invalid_event"
    assert letter["original_bytes"] == len(raw)
    assert len(letter["original"]) <= 128 * 1024
    assert next(iter(answers.values())).document["face_count"] == 1


async def test_a_hostile_search_is_answered_and_the_next_search_still_answered(
    client: EventClient,
) -> None:
    session = new_session()
    await index(client, [upload(session, "obama2.jpg")])
    deep = b'{"request_id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    await client.publish_raw(client.topics.search_requested, b"hostile", deep)
    results = await search(client, session, (FIXTURES / "obama.jpg").read_bytes())

    assert [match["photo_id"] for match in results["matches"]] == ["obama2"]


async def test_line_wrapped_base64_selfies_are_accepted(client: EventClient) -> None:
    session = new_session()
    await index(client, [upload(session, "obama2.jpg")])
    wrapped = base64.encodebytes((FIXTURES / "obama_small.jpg").read_bytes()).decode()

    results = await search(client, session, None, image_b64=wrapped)

    assert "\n" in wrapped
    assert results["status"] == "matched"


@pytest.mark.parametrize(
    ("field", "value"), [("limit", True), ("threshold", "0.9"), ("threshold", True)]
)
async def test_numbers_given_as_booleans_or_strings_are_refused(
    client: EventClient, field: str, value: object
) -> None:
    session = new_session()

    results = await search(
        client, session, (FIXTURES / "obama_small.jpg").read_bytes(), **{field: value}
    )

    assert results["status"] == "invalid_request"
    assert field in results["error"]
