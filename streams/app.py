"""The Faust application: topics, the two agents, and the resources they share.

Offsets are acknowledged by hand, after the batch's rows are committed in PostgreSQL and its
answers are delivered to Kafka, so a worker killed at any point redelivers rather than loses.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar, cast

import faust
from faust import Stream
from faust.types import EventT, StreamT
from mode import BaseSignalT

from agents.events import IncomingEvent, Publication
from agents.indexing import IndexLimits, PhotoIndexer
from agents.retrying import Backoff, retry_transient
from agents.searching import SearchPolicy, SelfieSearcher
from faces.decoding import ImageLimits
from faces.engine import FaceEngine, FaceLimits
from faces.model_pack import locate_model_pack
from faces.runtime import OnnxRuntime
from storage.face_store import FaceStore
from storage.photo_source import LocalPhotoSource, PhotoSource, S3PhotoSource
from streams.settings import Settings
from streams.topics import TopicNames
from streams.transport import PixoraApp

log = logging.getLogger(__name__)

T = TypeVar("T")

# Searches arrive one by one and a guest waits for each: a short window, small batches.
SEARCH_BATCH_SIZE = 4
SEARCH_BATCH_WINDOW_S = 0.01


class StartupRefused(Exception):
    """The worker's configuration cannot work; it stops before consuming anything."""


async def preflight(settings: Settings) -> FaceEngine:
    """Load the models and check them against the face store, before any event is consumed.

    A mismatch found later, inside an agent, would only crash that agent and leave the
    worker up but idle; here it stops the worker with the reason.
    """
    engine = await asyncio.to_thread(build_engine, settings)
    if engine.dimension != settings.embedding_dimension:
        raise StartupRefused(
            f"model {engine.model} embeds in {engine.dimension} dimensions, "
            f"EMBEDDING_DIMENSION is {settings.embedding_dimension}"
        )
    store = await _open_store(settings)
    try:
        stored_dimension = await store.embedding_dimension()
    finally:
        await store.close()
    if stored_dimension != engine.dimension:
        raise StartupRefused(
            f"the face store holds {stored_dimension}-dimensional embeddings, "
            f"model {engine.model} makes {engine.dimension}: add a migration first"
        )
    return engine


class WorkerResources:
    """The store and the photo source, opened once per worker on first use by an agent."""

    def __init__(self, settings: Settings, engine: FaceEngine) -> None:
        self.settings = settings
        self.engine = engine
        self._lock = asyncio.Lock()
        self._ready: tuple[PhotoIndexer, SelfieSearcher] | None = None
        self._store: FaceStore | None = None
        self._source: PhotoSource | None = None
        # One inference thread: ONNX Runtime already spreads one call over every core, and a
        # second caller would only contend for them. Decoding has a thread of its own, so the
        # next photo is decoded while this one is in inference.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")

    async def agents(self) -> tuple[PhotoIndexer, SelfieSearcher]:
        async with self._lock:
            if self._ready is None:
                self._ready = await self._open()
            return self._ready

    async def _open(self) -> tuple[PhotoIndexer, SelfieSearcher]:
        settings, engine = self.settings, self.engine
        self._store = await _open_store(settings)
        self._source = build_photo_source(settings)
        image_limits = ImageLimits(settings.max_image_pixels, settings.min_image_side_px)
        indexer = PhotoIndexer(
            engine,
            self._store,
            self._source,
            self._executor,
            IndexLimits(
                max_photos_per_session=settings.max_photos_per_session,
                image=image_limits,
            ),
            decoder=self._decoder,
        )
        searcher = SelfieSearcher(
            engine,
            self._store,
            self._source,
            self._executor,
            SearchPolicy(
                default_threshold=settings.face_similarity_threshold,
                max_limit=settings.search_result_limit,
                max_selfie_bytes=settings.max_selfie_bytes,
                image=image_limits,
            ),
        )
        return indexer, searcher

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self._source is not None:
            await self._source.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)


async def _open_store(settings: Settings) -> FaceStore:
    # A worker may start before its database: wait for it rather than crash-loop.
    dsn = settings.face_store_url
    assert dsn is not None, "the embedded runtime sets VECTOR_DATABASE_URL"
    return await retry_transient(
        lambda: FaceStore.open(
            dsn,
            parallel_scans=settings.search_parallel_scans,
            command_timeout_s=settings.database_command_timeout_s,
        ),
        "opening the face store",
        Backoff(max_delay_s=10),
    )


def build_engine(settings: Settings) -> FaceEngine:
    runtime = OnnxRuntime(settings.onnx_providers, settings.onnx_threads)
    pack = locate_model_pack(settings.face_model, settings.insightface_root)
    limits = FaceLimits(
        max_faces=settings.max_faces_per_photo,
        min_det_score=settings.min_detection_score,
        min_face_px=settings.min_face_size_px,
    )
    return FaceEngine(pack, runtime, limits)


def build_photo_source(settings: Settings) -> PhotoSource:
    if settings.s3_bucket_name:
        access_key, secret_key = settings.s3_credentials()
        return S3PhotoSource(
            settings.s3_bucket_name,
            endpoint_url=settings.s3_endpoint_url,
            access_key=access_key,
            secret_key=secret_key,
            region=settings.s3_region,
            timeout_s=settings.s3_timeout_s,
            max_bytes=settings.max_image_bytes,
        )
    return LocalPhotoSource(settings.photo_root, settings.max_image_bytes)


def create_app(settings: Settings, engine: FaceEngine) -> faust.App:
    assert settings.kafka_broker_url is not None, "the embedded runtime sets KAFKA_BROKER_URL"
    app = PixoraApp(
        settings.kafka_group_id,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        broker=settings.kafka_broker_url,
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",  # a new consumer group replays: that reindexes
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_s,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_s,
        producer_acks=-1,
        producer_max_request_size=settings.kafka_max_message_bytes,
        consumer_max_fetch_size=settings.kafka_max_message_bytes,
        # On shutdown, stop at once rather than wait for unacknowledged events: they are
        # redelivered, and a batch waiting out a database outage would never let the worker stop.
        stream_wait_empty=False,
        datadir=str(settings.data_dir / "faust"),
    )
    names = TopicNames.from_settings(settings)
    topic = _declare(app, settings)
    resources = WorkerResources(settings, engine)
    targets = {
        "photo_indexed": topic(names.photo_indexed),
        "dead_letter": topic(names.photo_uploaded_dlq),
        "search_results": topic(names.search_results),
        "search_dead_letter": topic(names.search_requested_dlq),
    }

    async def publish(publications: Sequence[Publication]) -> None:
        pending = [
            await targets[item.role].send(
                key=item.key.encode() if item.key else None, value=item.value
            )
            for item in publications
        ]
        await asyncio.gather(*pending)  # delivered to the broker before any offset moves

    @app.agent(topic(names.photo_uploaded), name="index-photos")
    async def index_photos(stream: StreamT[bytes]) -> None:
        indexer, _ = await resources.agents()
        batches = _event_batches(
            stream, settings.indexing_batch_size, settings.indexing_batch_window_s
        )

        async def index(
            events: Sequence[EventT[bytes]],
            incoming: list[IncomingEvent],
            run: _BatchRun,
            before: _BatchRun | None,
        ) -> None:
            if before is not None:
                await before.prepared.wait()  # one batch in inference at a time, in order
            try:
                prepared = await _until_done(
                    partial(indexer.prepare, incoming, run.decoded.set),
                    f"a batch of {len(events)} uploads",
                )
            finally:
                run.decoded.set()
                run.prepared.set()
            if before is not None:
                await before.finished  # saved, answered and acknowledged in order

            async def save_and_answer() -> None:
                await publish(await indexer.finish(prepared))

            await _until_done(save_and_answer, f"saving a batch of {len(events)} uploads")
            for event in events:
                await stream.ack(event)

        # Batches overlap: one is saved, answered and acknowledged while the next is in
        # inference and the one after has its first photo fetched and decoded, so inference
        # does not wait for the database, the broker or a batch boundary. The next batch is
        # taken once this one's photos are all decoded, which bounds how many are in hand.
        running: list[_BatchRun] = []
        try:
            async for events in batches:
                incoming = [_incoming(event) for event in events]
                indexer.prefetch(incoming)
                before = running[-1] if running else None
                run = _BatchRun()
                run.finished = asyncio.ensure_future(index(events, incoming, run, before))
                running = [*[r for r in running if not r.finished.done()], run]
                await run.decoded.wait()
        finally:
            for run in running:
                run.finished.cancel()  # their events are not acknowledged: they come again
            indexer.abandon_unfinished()

    @app.agent(topic(names.search_requested), name="answer-searches")
    async def answer_searches(stream: StreamT[bytes]) -> None:
        _, searcher = await resources.agents()
        async for events in _event_batches(stream, SEARCH_BATCH_SIZE, SEARCH_BATCH_WINDOW_S):
            for event in events:
                request = _incoming(event)

                async def answer(request: IncomingEvent = request) -> None:
                    await publish(await searcher.answer(request))

                await _until_done(answer, f"search at offset {request.offset}")
                await stream.ack(event)

    @app.on_before_shutdown.connect
    async def close_resources(sender: Any, /, *_: Any, signal: BaseSignalT[Any], **__: Any) -> None:
        # The consumer has stopped by now: no agent uses the pool or the S3 client any more.
        await resources.close()

    return app


class _BatchRun:
    """One batch of uploads on its way through the index agent."""

    def __init__(self) -> None:
        self.decoded = asyncio.Event()  # its photos are decoded: the decoder is free
        self.prepared = asyncio.Event()  # analyzed and checked: the next batch may start
        self.finished: asyncio.Future[None]  # saved, answered and acknowledged


async def _until_done(work: Callable[[], Awaitable[T]], what: str) -> T:
    """Run an agent's step, retrying anything that escapes it.

    The agents turn every foreseen fault into an answer or a dead letter; what still escapes
    (a broker refusing the answers, a bug) must not end the agent, which would leave its
    partitions silently unconsumed, nor acknowledge events that got no answer.
    """
    backoff = Backoff(max_delay_s=30)
    attempt = 1
    while True:
        try:
            return await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = backoff.delay_s(attempt)
            log.exception("%s failed (attempt %d); retrying in %.1f s", what, attempt, delay)
            await asyncio.sleep(delay)
            attempt += 1


def _declare(app: faust.App, settings: Settings) -> Any:
    def topic(name: str) -> faust.TopicT:
        # Raw bytes in and out: our schemas parse and validate, so a malformed event becomes a
        # dead letter with a reason instead of a decode error inside Faust.
        return app.topic(
            name,
            value_type=bytes,
            key_type=bytes,
            value_serializer="raw",
            key_serializer="raw",
            partitions=settings.topic_partitions,
        )

    return topic


def _event_batches(
    stream: StreamT[bytes], size: int, within_s: float
) -> AsyncIterator[Sequence[EventT[bytes]]]:
    """Batches of events that stay unacknowledged until we acknowledge each one.

    Faust annotates `noack_take` as yielding values; it yields the events themselves.
    """
    batches = cast(Stream[bytes], stream).noack_take(size, within=within_s)
    return cast(AsyncIterator[Sequence[EventT[bytes]]], batches)


def _incoming(event: EventT[bytes]) -> IncomingEvent:
    message = event.message
    return IncomingEvent(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key if isinstance(message.key, bytes) else None,
        value=message.value if isinstance(message.value, bytes) else bytes(message.value or b""),
    )
