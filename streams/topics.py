"""Topic names and their creation, shared by the worker and the command-line clients.

Both sides create the topics before using them: a producer writing first would otherwise get a
broker-default topic (often one partition) that the worker cannot widen.
"""

import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicNames:
    photo_uploaded: str
    photo_deleted: str
    session_deleted: str
    search_requested: str
    search_results: str
    photo_indexed: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "TopicNames":
        return cls(
            photo_uploaded=settings.topic_photo_uploaded,
            photo_deleted=settings.topic_photo_deleted,
            session_deleted=settings.topic_session_deleted,
            search_requested=settings.topic_search_requested,
            search_results=settings.topic_search_results,
            photo_indexed=settings.topic_photo_indexed,
        )

    @property
    def photo_uploaded_dlq(self) -> str:
        return self.photo_uploaded + DEAD_LETTER_SUFFIX

    @property
    def search_requested_dlq(self) -> str:
        return self.search_requested + DEAD_LETTER_SUFFIX

    def all(self) -> list[str]:
        return [
            self.photo_uploaded,
            self.photo_deleted,
            self.session_deleted,
            self.search_requested,
            self.search_results,
            self.photo_indexed,
            self.photo_uploaded_dlq,
            self.search_requested_dlq,
        ]


async def ensure_topics(settings: Settings) -> None:
    """Create every topic this service reads or writes, with the configured partitions."""
    topics = TopicNames.from_settings(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.broker_bootstrap, client_id="pixora-face-admin"
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics.all() if name not in existing]
        if not missing:
            return
        # Another worker or client may create one between our listing and our request.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(name, settings.topic_partitions, settings.topic_replication_factor)
                    for name in missing
                ]
            )
        log.info(
            "topics created: %s (%d partitions)", ", ".join(missing), settings.topic_partitions
        )
    finally:
        await admin.close()
