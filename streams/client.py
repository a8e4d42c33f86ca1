"""Publishing events and waiting for their answers, for the CLI, the demo and the tests.

The answer consumer is positioned at the end of every answer topic before anything is
published, so no answer can slip past between the two.
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    topic: str
    document: dict[str, Any]
    produced_at: float = 0.0  # the record's timestamp: when the worker sent it, in epoch seconds


class EventClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = TopicNames.from_settings(settings)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.broker_bootstrap,
            acks="all",
            max_request_size=settings.kafka_max_message_bytes,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.broker_bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            auto_offset_reset="earliest",
        )

    async def __aenter__(self) -> "EventClient":
        await ensure_topics(self.settings)
        await self._producer.start()
        await self._consumer.start()
        answer_topics = [
            self.topics.photo_indexed,
            self.topics.photo_uploaded_dlq,
            self.topics.search_results,
            self.topics.search_requested_dlq,
        ]
        partitions = [
            TopicPartition(topic, partition)
            for topic in answer_topics
            for partition in sorted(
                self._consumer.partitions_for_topic(topic) or await self._partitions(topic)
            )
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self._consumer.position(partition)  # resolve "end" now, before we publish
        return self

    async def _partitions(self, topic: str) -> set[int]:
        for _ in range(50):
            found: set[int] | None = self._consumer.partitions_for_topic(topic)
            if found:
                return found
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {topic!r} has no partitions on the broker")

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()
        await self._consumer.stop()

    async def publish(self, topic: str, key: str, value: dict[str, Any]) -> None:
        await self._producer.send_and_wait(topic, json.dumps(value).encode(), key=key.encode())

    async def publish_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value, key=key)

    async def upload(
        self,
        events: list[dict[str, Any]],
        timeout_s: float,
        on_answer: Callable[[str, Answer], None] | None = None,
    ) -> dict[str, Answer]:
        """Publish photo-uploaded events; return each event id's photo-indexed or dead letter."""
        for event in events:
            await self.publish(self.topics.photo_uploaded, str(event["session_id"]), event)
        answer_topics = {self.topics.photo_indexed, self.topics.photo_uploaded_dlq}
        return await self.answers(
            {str(event["event_id"]) for event in events},
            lambda answer: upload_event_id(answer) if answer.topic in answer_topics else None,
            timeout_s,
            on_answer,
        )

    async def search(
        self, requests: list[dict[str, Any]], timeout_s: float
    ) -> dict[str, dict[str, Any]]:
        """Publish search-requested events; return each request id's search-results event."""
        for request in requests:
            await self.publish(self.topics.search_requested, str(request["session_id"]), request)
        found = await self.answers(
            {str(request["request_id"]) for request in requests},
            lambda answer: (
                search_request_id(answer) if answer.topic == self.topics.search_results else None
            ),
            timeout_s,
        )
        return {request_id: answer.document for request_id, answer in found.items()}

    async def answers(
        self,
        wanted: set[str],
        answer_id: Callable[[Answer], str | None],
        timeout_s: float,
        on_answer: Callable[[str, Answer], None] | None = None,
    ) -> dict[str, Answer]:
        """Collect one answer per wanted id (the first one seen); stop at the deadline."""
        found: dict[str, Answer] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            batches = await self._consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
            for records in batches.values():
                for record in records:
                    try:
                        answer = Answer(
                            record.topic,
                            json.loads(record.value or b"null"),
                            record.timestamp / 1000,
                        )
                    except ValueError:
                        continue
                    key = answer_id(answer)
                    if key in wanted and key not in found:
                        found[key] = answer
                        if on_answer:
                            on_answer(key, answer)
        return found


def upload_event_id(answer: Answer) -> str | None:
    value = answer.document.get("event_id") if isinstance(answer.document, dict) else None
    return value if isinstance(value, str) else None


def search_request_id(answer: Answer) -> str | None:
    value = answer.document.get("request_id") if isinstance(answer.document, dict) else None
    return value if isinstance(value, str) else None
