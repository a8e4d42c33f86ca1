"""The event contract: what parses, what is refused and with which reason."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.errors import InvalidEvent
from schemas.events import (
    DeadLetter,
    FaceFound,
    PhotoIndexed,
    PhotoMatch,
    PhotoUploaded,
    SearchRequested,
    SearchResults,
    peek_field,
)


def upload(**overrides: Any) -> bytes:
    document: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "evt-1",
        "session_id": "sess-1",
        "source": "s3://bucket/sess-1/IMG_0001.JPG",
        "uploaded_at": "2024-05-01T12:00:00Z",
    }
    document.update(overrides)
    return json.dumps({key: value for key, value in document.items() if value is not ...}).encode()


def search(**overrides: Any) -> bytes:
    document: dict[str, Any] = {
        "schema_version": 1,
        "request_id": "req-1",
        "session_id": "sess-1",
        "source": "selfies/guest.jpg",
    }
    document.update(overrides)
    return json.dumps({key: value for key, value in document.items() if value is not ...}).encode()


def test_photo_id_is_derived_from_the_s3_file_name_without_extension() -> None:
    raw = upload(source="s3://b/sess/IMG_0001.JPG")

    event = PhotoUploaded.parse(raw)

    assert event.photo_id == "IMG_0001"
    assert event.photo == "IMG_0001"


def test_photo_id_is_derived_from_a_bare_key_file_name() -> None:
    raw = upload(source="a/b/c.png")

    event = PhotoUploaded.parse(raw)

    assert event.photo_id == "c"


def test_photo_id_given_by_the_platform_is_kept() -> None:
    raw = upload(photo_id="platform-42", source="a/b/c.png")

    event = PhotoUploaded.parse(raw)

    assert event.photo_id == "platform-42"


def test_photo_uploaded_keeps_the_parsed_fields() -> None:
    raw = upload()

    event = PhotoUploaded.parse(raw)

    assert event.event_id == "evt-1"
    assert event.session_id == "sess-1"
    assert event.source == "s3://bucket/sess-1/IMG_0001.JPG"
    assert event.uploaded_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert event.schema_version == 1


def test_unknown_fields_are_ignored() -> None:
    raw = upload(extra_field="whatever")

    event = PhotoUploaded.parse(raw)

    assert not hasattr(event, "extra_field")


def test_invalid_json_is_refused_as_not_valid_json() -> None:
    raw = b'{"event_id": "evt-1",'

    with pytest.raises(InvalidEvent) as refused:
        PhotoUploaded.parse(raw)

    assert "not valid JSON" in str(refused.value)
    assert refused.value.code == "invalid_event"
    assert refused.value.retriable is False


def test_invalid_utf8_is_refused_as_not_valid_json() -> None:
    raw = b"\xff\xfe\x00garbage"

    with pytest.raises(InvalidEvent, match="not valid JSON"):
        PhotoUploaded.parse(raw)


def test_a_json_array_is_refused_as_not_an_object() -> None:
    raw = b'[{"event_id": "evt-1"}]'

    with pytest.raises(InvalidEvent, match="must be a JSON object, got list"):
        PhotoUploaded.parse(raw)


def test_a_missing_session_id_is_refused_naming_the_field() -> None:
    raw = upload(session_id=...)

    with pytest.raises(InvalidEvent) as refused:
        PhotoUploaded.parse(raw)

    assert "session_id" in str(refused.value)
    assert "Field required" in str(refused.value)


def test_an_empty_event_id_is_refused_naming_the_field() -> None:
    raw = upload(event_id="")

    with pytest.raises(InvalidEvent) as refused:
        PhotoUploaded.parse(raw)

    assert "event_id" in str(refused.value)
    assert "at least 1 character" in str(refused.value)


def test_an_id_of_200_characters_is_accepted() -> None:
    raw = upload(event_id="e" * 200)

    event = PhotoUploaded.parse(raw)

    assert len(event.event_id) == 200


def test_an_id_over_200_characters_is_refused_naming_the_field() -> None:
    raw = upload(session_id="s" * 201)

    with pytest.raises(InvalidEvent) as refused:
        PhotoUploaded.parse(raw)

    assert "session_id" in str(refused.value)
    assert "at most 200 characters" in str(refused.value)


def test_schema_version_2_is_refused_naming_the_field() -> None:
    raw = upload(schema_version=2)

    with pytest.raises(InvalidEvent) as refused:
        PhotoUploaded.parse(raw)

    assert "schema_version" in str(refused.value)


def test_a_missing_schema_version_defaults_to_1() -> None:
    raw = upload(schema_version=...)

    event = PhotoUploaded.parse(raw)

    assert event.schema_version == 1


def test_a_source_with_no_derivable_photo_id_is_refused() -> None:
    raw = upload(source="/")

    with pytest.raises(InvalidEvent, match="no photo_id given"):
        PhotoUploaded.parse(raw)


def test_a_non_string_event_id_is_refused_naming_the_field() -> None:
    raw = upload(event_id=123)

    with pytest.raises(InvalidEvent, match="event_id"):
        PhotoUploaded.parse(raw)


def test_search_with_only_a_source_is_accepted() -> None:
    raw = search()

    request = SearchRequested.parse(raw)

    assert request.source == "selfies/guest.jpg"
    assert request.image_b64 is None
    assert request.threshold is None
    assert request.limit is None


def test_search_with_only_an_inline_image_is_accepted() -> None:
    raw = search(source=..., image_b64="aGVsbG8=")

    request = SearchRequested.parse(raw)

    assert request.image_b64 == "aGVsbG8="
    assert request.source is None


def test_search_with_both_source_and_inline_image_is_refused() -> None:
    raw = search(image_b64="aGVsbG8=")

    with pytest.raises(InvalidEvent, match="exactly one of source or image_b64"):
        SearchRequested.parse(raw)


def test_search_with_neither_source_nor_inline_image_is_refused() -> None:
    raw = search(source=...)

    with pytest.raises(InvalidEvent, match="exactly one of source or image_b64"):
        SearchRequested.parse(raw)


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.3, 1.0])
def test_search_threshold_within_minus_one_and_one_is_accepted(threshold: float) -> None:
    raw = search(threshold=threshold)

    request = SearchRequested.parse(raw)

    assert request.threshold == threshold


@pytest.mark.parametrize("threshold", [-1.01, 1.01, 5])
def test_search_threshold_outside_minus_one_and_one_is_refused(threshold: float) -> None:
    raw = search(threshold=threshold)

    with pytest.raises(InvalidEvent, match="threshold"):
        SearchRequested.parse(raw)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_search_threshold_nan_or_infinite_is_refused(literal: str) -> None:
    raw = search(threshold=0.5).replace(b"0.5", literal.encode())

    with pytest.raises(InvalidEvent, match="threshold"):
        SearchRequested.parse(raw)


@pytest.mark.parametrize("text", ["nan", "NaN"])
def test_search_threshold_nan_as_a_string_is_refused(text: str) -> None:
    raw = search(threshold=text)

    with pytest.raises(InvalidEvent, match="threshold"):
        SearchRequested.parse(raw)


def test_search_limit_zero_is_refused() -> None:
    raw = search(limit=0)

    with pytest.raises(InvalidEvent) as refused:
        SearchRequested.parse(raw)

    assert "limit" in str(refused.value)
    assert "greater than or equal to 1" in str(refused.value)


def test_search_limit_one_is_accepted() -> None:
    raw = search(limit=1)

    request = SearchRequested.parse(raw)

    assert request.limit == 1


def test_photo_uploaded_round_trips_through_json() -> None:
    original = PhotoUploaded.parse(upload())

    again = PhotoUploaded.parse(original.to_json())

    assert again == original
    assert again.photo_id == "IMG_0001"


def test_search_requested_round_trips_through_json() -> None:
    original = SearchRequested.parse(search(threshold=0.42, limit=7))

    again = SearchRequested.parse(original.to_json())

    assert again == original


def test_photo_indexed_round_trips_through_json() -> None:
    original = PhotoIndexed(
        event_id="evt-1",
        session_id="sess-1",
        photo_id="IMG_0001",
        face_count=1,
        faces=[FaceFound(face_index=0, bbox=(1.5, 2.0, 30.25, 40.0), det_score=0.875)],
        model="buffalo_s",
        took_ms=12.5,
        indexed_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )

    again = PhotoIndexed.parse(original.to_json())

    assert again == original
    assert again.faces[0].bbox == (1.5, 2.0, 30.25, 40.0)


def test_search_results_round_trip_through_json() -> None:
    original = SearchResults(
        request_id="req-1",
        session_id="sess-1",
        status="matched",
        matches=[PhotoMatch(photo_id="IMG_0001", similarity=0.71, bbox=(0.0, 0.0, 10.0, 10.0))],
        threshold=0.3,
        limit=5,
        took_ms=3.0,
    )

    again = SearchResults.parse(original.to_json())

    assert again == original
    assert [match.photo_id for match in again.matches] == ["IMG_0001"]


def test_dead_letter_round_trips_through_json() -> None:
    original = DeadLetter(
        topic="photos.uploaded",
        partition=3,
        offset=17,
        key="sess-1",
        original="not json",
        original_bytes=8,
        reason="not valid JSON",
        error_code="invalid_event",
        attempts=1,
        failed_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
    )

    again = DeadLetter.parse(original.to_json())

    assert again == original


def test_to_json_writes_the_schema_version() -> None:
    event = PhotoUploaded.parse(upload(schema_version=...))

    document = json.loads(event.to_json())

    assert document["schema_version"] == 1
    assert document["photo_id"] == "IMG_0001"


def test_peek_field_reads_a_string_field_from_an_invalid_event() -> None:
    raw = upload(event_id="", session_id="sess-9")

    value = peek_field(raw, "session_id")

    assert value == "sess-9"


@pytest.mark.parametrize(
    "raw", [b"garbage", b"\xff\xfe", b"", b"[1, 2]", b'"session_id"', b"null", b'{"session_id": 5}']
)
def test_peek_field_on_garbage_returns_none(raw: bytes) -> None:
    value = peek_field(raw, "session_id")

    assert value is None
