"""The index agent's work: photo-uploaded events in, faces stored, photo-indexed events out.

A batch is handled in two steps, so that inference never waits on the database or the broker:

- `prepare`: parse and check each event; answer the events already indexed with the same model
  (a redelivery or a replay) from the store; refuse photos over the session limit; fetch,
  decode, detect and embed the rest. The photos are fetched together, and each is decoded in
  one thread while the one before it is detected and embedded in another.
- `finish`: save the batch in one transaction and build its answers. Only then does the caller
  acknowledge the batch's offsets.

The agent prepares a batch while the one before it is finished, and has `prefetch` fetch and
decode the first photo of the next batch meanwhile. Until their transaction commits, a prepared
batch's photos are kept as unsaved, and the next batches' checks count them as stored: a photo
takes its place in its session once, and a redelivered event is answered as a replay rather
than indexed twice.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from agents.events import IncomingEvent, Publication, dead_letter_publication, rounded_box
from agents.retrying import Backoff, retry_transient
from faces.decoding import EncodedPhoto, ImageLimits
from faces.engine import DecodedPhoto, FaceEngine, PhotoFaces, decode_for_detection
from schemas.errors import PixoraError, SessionFull, StorageRejected
from schemas.events import FaceFound, PhotoIndexed, PhotoUploaded
from storage.face_store import FaceStore, IndexedPhoto, PhotoRecord, StoredFace
from storage.photo_source import PhotoSource

log = logging.getLogger(__name__)

T = TypeVar("T")

# An error we did not foresee (a bug, a model crash on one odd image) is retried this many
# times before the photo is dead-lettered, so one poison photo cannot stall its partition.
UNEXPECTED_ERROR_ATTEMPTS = 3
FETCH_CONCURRENCY = 4
# Decoded photos waiting for inference, beyond the one being decoded and the one in inference.
DECODED_AHEAD = 1
# Photos of the next batch fetched and decoded while the batch before is in inference.
PREFETCHED_PER_BATCH = 1


# Indexing waits as long as it takes: a photo is never skipped because a dependency was down.
INDEXING_BACKOFF = Backoff(max_delay_s=10.0)


@dataclass(frozen=True)
class IndexLimits:
    max_photos_per_session: int = 1000
    image: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class _SessionRoom:
    """How full a session is: photos stored or unsaved, plus those this batch will store."""

    session_id: str
    count: int
    stored: set[str]


@dataclass
class _Work:
    event: IncomingEvent
    upload: PhotoUploaded | None = None
    outcome: Publication | None = None
    faces: PhotoFaces | None = None
    superseded_by: "_Work | None" = None
    takes_place: bool = False  # a photo new to its session, counted against its limit
    started: float = field(default_factory=time.perf_counter)
    work_ms: float | None = None  # decode, detect and embed of this photo alone

    def took_ms(self) -> float:
        elapsed = (
            self.work_ms
            if self.work_ms is not None
            else (time.perf_counter() - self.started) * 1000
        )
        return round(elapsed, 1)

    @property
    def key(self) -> tuple[str, str]:
        assert self.upload is not None
        return self.upload.session_id, self.upload.photo


@dataclass(frozen=True)
class PreparedBatch:
    """A batch analyzed and checked, its photos not saved yet."""

    work: list[_Work]
    to_save: list[_Work]


# A photo's bytes, checked, and its pixels decoded for detection.
_Decoded = tuple[EncodedPhoto, DecodedPhoto]


def _prefetch_key(upload: PhotoUploaded) -> tuple[str, ...]:
    return upload.session_id, upload.photo, upload.event_id, upload.source


def _discard(future: "asyncio.Future[Any] | None") -> None:
    """Cancel work no longer wanted; a failure it already had is not an error of anyone's."""
    if future is None:
        return
    if future.done() and not future.cancelled():
        future.exception()
    future.cancel()


class PhotoIndexer:
    def __init__(
        self,
        engine: FaceEngine,
        store: FaceStore,
        source: PhotoSource,
        executor: Executor,
        limits: IndexLimits,
        backoff: Backoff = INDEXING_BACKOFF,
        *,
        decoder: Executor | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.source = source
        self.executor = executor  # detection and embedding
        self.decoder = decoder or executor  # decoding, ideally a thread of its own
        self.limits = limits
        self.backoff = backoff
        # At most this many photos in flight from the store at once, whatever the batch size.
        self._fetching = asyncio.Semaphore(FETCH_CONCURRENCY)
        # Prepared photos whose batch is not saved yet, by (session, photo), oldest first: the
        # same photo may be in several batches. A batch's photos leave only once their
        # transaction has committed.
        self._unsaved: dict[tuple[str, str], list[_Work]] = {}
        # Photos decoded ahead by `prefetch`, until their batch is prepared.
        self._prefetched: dict[tuple[str, ...], asyncio.Future[_Decoded]] = {}

    async def index_batch(self, events: Sequence[IncomingEvent]) -> list[Publication]:
        """Index a batch; return one publication per event, in event order."""
        return await self.finish(await self.prepare(events))

    async def prepare(
        self, events: Sequence[IncomingEvent], on_decoded: Callable[[], None] | None = None
    ) -> PreparedBatch:
        """Everything but the save: only reads the store. Batches must be finished in the
        order they were prepared, and a batch may be prepared while the one before it is
        being finished. `on_decoded` is called once the batch's last photo is decoded: the
        decoder is free from then on, for the next batch's `prefetch`."""
        work = [_Work(event) for event in events]
        for item in work:
            self._parse(item)

        pending = [item for item in work if item.outcome is None]
        rooms = await self._triage(pending)
        pending = [item for item in pending if item.superseded_by is None]
        try:
            await self._analyze([item for item in pending if item.outcome is None], on_decoded)
        finally:
            for item in work:  # decoded ahead for nothing: a replay, a duplicate, a full session
                if item.upload is not None:
                    _discard(self._prefetched.pop(_prefetch_key(item.upload), None))

        analyzed = [item for item in pending if item.outcome is None and item.faces is not None]
        self._enforce_session_limits(analyzed, rooms)
        to_save = [item for item in analyzed if item.outcome is None]
        for item in to_save:
            self._unsaved.setdefault(item.key, []).append(item)
        return PreparedBatch(work, to_save)

    def prefetch(self, events: Sequence[IncomingEvent]) -> None:
        """Start fetching and decoding the first photos of a batch not prepared yet.

        Called once the batch before has its photos decoded and is in inference, so that this
        one's inference does not start by waiting for its first photo. `prepare` uses what its
        checks keep and drops the rest (a replay, a photo for a full session).
        """
        started = 0
        for event in events:
            if started == PREFETCHED_PER_BATCH:
                break
            try:
                upload = PhotoUploaded.parse(event.value)
            except PixoraError:
                continue  # `prepare` dead-letters it
            key = _prefetch_key(upload)
            if key not in self._prefetched:
                self._prefetched[key] = asyncio.ensure_future(self._fetch_and_decode(upload))
                started += 1

    def abandon_unfinished(self) -> None:
        """Forget every batch prepared and not finished: the agent stopped without saving
        them, their events are not acknowledged and will come again."""
        self._unsaved.clear()
        for future in self._prefetched.values():
            _discard(future)
        self._prefetched.clear()

    def _forget(self, item: _Work) -> None:
        versions = [version for version in self._unsaved.get(item.key, []) if version is not item]
        if versions:
            self._unsaved[item.key] = versions
        else:
            self._unsaved.pop(item.key, None)

    @property
    def decoded_ahead(self) -> int:
        """Photos fetched and decoded by `prefetch` that no batch has taken yet."""
        return len(self._prefetched)

    async def finish(self, batch: PreparedBatch) -> list[Publication]:
        """Save a prepared batch; return one publication per event, in event order."""
        await self._save(batch.to_save)
        for item in batch.work:
            self._answer_like_its_winner(item)
        for item in batch.work:
            self._log(item)
        return [item.outcome for item in batch.work if item.outcome is not None]

    def _parse(self, item: _Work) -> None:
        try:
            item.upload = PhotoUploaded.parse(item.event.value)
        except PixoraError as error:
            item.outcome = dead_letter_publication(item.event, error)

    async def _triage(self, pending: list[_Work]) -> dict[str, "_SessionRoom"]:
        """Answer replays from the store, fold duplicates, refuse uploads to full sessions."""
        sessions: dict[str, list[_Work]] = {}
        for item in pending:
            assert item.upload is not None
            sessions.setdefault(item.upload.session_id, []).append(item)

        rooms = {}
        for session_id, items in sessions.items():
            try:
                rooms[session_id] = await self._triage_session(session_id, items)
            except StorageRejected as error:
                # The database refuses even to look these ids up: no retry can help them.
                for item in items:
                    item.outcome = dead_letter_publication(item.event, error)
        return rooms

    async def _triage_session(self, session_id: str, items: list[_Work]) -> "_SessionRoom":
        # The unsaved photos are listed before the store is read: a photo whose batch commits
        # in between is then found in both, never in neither, and the store's answer (one
        # snapshot) says which of them its count already holds.
        pending = {
            photo_id: list(versions)
            for (session, photo_id), versions in self._unsaved.items()
            if session == session_id
        }
        photo_ids = [item.upload.photo for item in items if item.upload]
        view = await retry_transient(
            partial(self.store.session_view, session_id, [*photo_ids, *pending]),
            "reading the session's photos",
            self.backoff,
        )
        known, count = view.known, view.photo_count
        # A photo takes its place once, through whichever of its unsaved versions came first
        # to a session that did not hold it.
        count += sum(
            1
            for photo_id, versions in pending.items()
            if photo_id not in known and any(version.takes_place for version in versions)
        )
        # A redelivery is compared with the photo's latest version, as the store would be.
        unsaved = {photo_id: versions[-1] for photo_id, versions in pending.items()}
        room = _SessionRoom(session_id, count, set(known) | set(unsaved))
        # Within one batch a photo uploaded twice is indexed once, from its last event.
        last_event_of = {item.upload.photo: item for item in items if item.upload}
        for item in items:
            assert item.upload is not None
            photo_id = item.upload.photo
            record, before = known.get(photo_id), unsaved.get(photo_id)
            if before is not None and self._is_redelivery(item.upload, before):
                item.superseded_by = before  # answered like it once it is saved
            elif before is None and record is not None and self._is_replay(item.upload, record):
                item.outcome = self._replayed(item.upload, record, item.took_ms())
            elif last_event_of[photo_id] is not item:
                item.superseded_by = last_event_of[photo_id]
            elif photo_id not in room.stored and count >= self.limits.max_photos_per_session:
                item.outcome = self._session_full(item, room)  # full already: not even fetched
        return room

    def _is_redelivery(self, upload: PhotoUploaded, before: _Work) -> bool:
        assert before.upload is not None
        return before.upload.event_id == upload.event_id and before.upload.source == upload.source

    def _is_replay(self, upload: PhotoUploaded, record: PhotoRecord) -> bool:
        # The same event again (a redelivery, a replayed topic) for the same photo file and the
        # same model is answered from the store; a new upload of the photo is indexed afresh.
        return (
            record.event_id == upload.event_id
            and record.source == upload.source
            and record.model == self.engine.model
        )

    def _enforce_session_limits(
        self, analyzed: list[_Work], rooms: dict[str, "_SessionRoom"]
    ) -> None:
        """Refuse new photos beyond MAX_PHOTOS_PER_SESSION, counting only photos that will be
        stored: one that failed to fetch or decode takes no place in its session."""
        for item in analyzed:
            assert item.upload is not None
            room = rooms[item.upload.session_id]
            if item.upload.photo in room.stored:
                continue
            if room.count >= self.limits.max_photos_per_session:
                item.outcome = self._session_full(item, room)
                continue
            room.stored.add(item.upload.photo)
            room.count += 1
            item.takes_place = True

    def _session_full(self, item: _Work, room: "_SessionRoom") -> Publication:
        error = SessionFull(
            f"session {room.session_id!r} already holds {room.count} photos, "
            f"the limit MAX_PHOTOS_PER_SESSION={self.limits.max_photos_per_session}"
        )
        return dead_letter_publication(item.event, error)

    async def _fetch(self, item: _Work) -> bytes:
        assert item.upload is not None
        return await self._fetch_source(item.upload.source)

    async def _fetch_source(self, source: str) -> bytes:
        async with self._fetching:
            return await retry_transient(
                partial(self.source.fetch, source), f"fetching {source!r}", self.backoff
            )

    async def _analyze(
        self, items: list[_Work], on_decoded: Callable[[], None] | None = None
    ) -> None:
        """Fetch, decode, detect and embed, setting each photo's faces or its dead letter.

        Every photo is fetched at once, so S3 round trips overlap each other and the work
        ahead of them. Photos are decoded in order, in the decoder's thread, at most
        DECODED_AHEAD ahead of the one being detected and embedded in the inference thread:
        decoding the next photo overlaps this one's inference, and few frames wait in memory.
        """
        ready = [
            self._prefetched.pop(_prefetch_key(item.upload), None) for item in items if item.upload
        ]
        fetches = [
            None if ahead is not None else asyncio.ensure_future(self._fetch(item))
            for item, ahead in zip(items, ready, strict=True)
        ]
        decoded: asyncio.Queue[tuple[_Work, _Decoded | None]] = asyncio.Queue(DECODED_AHEAD)

        async def decode_in_order() -> None:
            for item, fetch, ahead in zip(items, fetches, ready, strict=True):
                await decoded.put((item, await self._decoded(item, fetch, ahead)))
            if on_decoded is not None:
                on_decoded()

        decoding = asyncio.ensure_future(decode_in_order())
        try:
            for _ in items:
                item, photo = await decoded.get()
                if photo is not None:
                    await self._infer(item, photo)
        finally:
            decoding.cancel()
            for pending in [*fetches, *ready]:
                _discard(pending)

    async def _decoded(
        self,
        item: _Work,
        fetch: "asyncio.Future[bytes] | None",
        ahead: "asyncio.Future[_Decoded] | None",
    ) -> "_Decoded | None":
        """The photo fetched and decoded for detection, or None with its dead letter set.

        The first attempt uses the photo's fetch in flight, or its decode from `prefetch`."""

        async def attempt(number: int) -> _Decoded:
            started = time.perf_counter()
            if number == 1 and ahead is not None:
                decoded = await ahead
            else:
                data = await (fetch if number == 1 and fetch else self._fetch(item))
                started = time.perf_counter()
                decoded = await self._decode_off_loop(data)
            item.work_ms = (time.perf_counter() - started) * 1000
            return decoded

        return await self._attempted(item, "decoding", attempt)

    async def _fetch_and_decode(self, upload: PhotoUploaded) -> "_Decoded":
        return await self._decode_off_loop(await self._fetch_source(upload.source))

    async def _decode_off_loop(self, data: bytes) -> "_Decoded":
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, self._decode, data)

    def _decode(self, data: bytes) -> "_Decoded":
        photo = EncodedPhoto.within(data, self.limits.image)
        return photo, decode_for_detection(photo)

    async def _infer(self, item: _Work, decoded: "_Decoded") -> None:
        loop = asyncio.get_running_loop()

        async def attempt(number: int) -> PhotoFaces:
            started = time.perf_counter()
            faces = await loop.run_in_executor(self.executor, self.engine.index_decoded, *decoded)
            item.work_ms = (item.work_ms or 0.0) + (time.perf_counter() - started) * 1000
            return faces

        item.faces = await self._attempted(item, "indexing", attempt)

    async def _attempted(
        self, item: _Work, doing: str, attempt: Callable[[int], Awaitable[T]]
    ) -> T | None:
        """`attempt`'s result, or None with the photo's dead letter set: at once for a foreseen
        error, after UNEXPECTED_ERROR_ATTEMPTS tries for any other."""
        assert item.upload is not None
        for number in range(1, UNEXPECTED_ERROR_ATTEMPTS + 1):
            try:
                return await attempt(number)
            except PixoraError as error:
                item.outcome = dead_letter_publication(item.event, error, number)
                return None
            except Exception as error:
                log.exception(
                    "unexpected error %s photo %r (attempt %d)", doing, item.upload.photo, number
                )
                if number == UNEXPECTED_ERROR_ATTEMPTS:
                    item.outcome = dead_letter_publication(item.event, error, number)
        return None

    async def _save(self, analyzed: list[_Work]) -> None:
        photos = []
        for item in analyzed:
            assert item.upload is not None and item.faces is not None
            photos.append(
                IndexedPhoto(
                    session_id=item.upload.session_id,
                    photo_id=item.upload.photo,
                    event_id=item.upload.event_id,
                    source=item.upload.source,
                    model=self.engine.model,
                    faces=[
                        StoredFace(face.bbox, face.det_score, face.embedding)
                        for face in item.faces.faces
                    ],
                    faces_dropped=item.faces.dropped,
                )
            )
        saved = await self._saved(analyzed, photos)
        for item in analyzed:
            self._forget(item)

        for item in saved:
            assert item.upload is not None and item.faces is not None
            faces = [
                FaceFound(
                    face_index=index,
                    bbox=rounded_box(face.bbox),
                    det_score=round(face.det_score, 4),
                )
                for index, face in enumerate(item.faces.faces)
            ]
            item.outcome = self._indexed(
                item.upload, faces, item.faces.dropped, item.took_ms(), replayed=False
            )

    async def _saved(self, analyzed: list[_Work], photos: list[IndexedPhoto]) -> list[_Work]:
        """Save the photos in one transaction; return the items whose photo was saved."""
        try:
            await retry_transient(
                partial(self.store.save, photos),
                f"saving a batch of {len(photos)} photos",
                self.backoff,
            )
            return analyzed
        except StorageRejected as error:
            # One photo's rows broke a rule of the database; save the others one by one so
            # the bad one is dead-lettered alone instead of holding back its whole batch.
            log.warning(
                "batch of %d photos refused (%s); saving them one by one", len(photos), error
            )
            return await self._save_one_by_one(analyzed, photos)

    async def _save_one_by_one(
        self, analyzed: list[_Work], photos: list[IndexedPhoto]
    ) -> list[_Work]:
        saved = []
        for item, photo in zip(analyzed, photos, strict=True):
            try:
                await retry_transient(
                    partial(self.store.save, [photo]),
                    f"saving photo {photo.photo_id!r}",
                    self.backoff,
                )
            except StorageRejected as error:
                item.outcome = dead_letter_publication(item.event, error)
                continue
            saved.append(item)
        return saved

    def _replayed(self, upload: PhotoUploaded, record: PhotoRecord, took_ms: float) -> Publication:
        faces = [
            FaceFound(face_index=index, bbox=rounded_box(bbox), det_score=round(score, 4))
            for index, (bbox, score) in enumerate(record.faces)
        ]
        return self._indexed(upload, faces, record.faces_dropped, took_ms, replayed=True)

    def _answer_like_its_winner(self, item: _Work) -> None:
        winner = item.superseded_by
        if winner is None or item.outcome is not None:
            return
        # The winner may itself follow another event: the photo's last upload in this batch
        # can be a redelivery of one in a batch saved before.
        self._answer_like_its_winner(winner)
        item.outcome = self._like(item, winner)

    def _like(self, item: _Work, winner: _Work) -> Publication:
        # The same photo came twice in one batch: only its last event was indexed, and the
        # earlier one gets the same answer as a replay, so every event is still answered.
        assert item.upload is not None and winner.outcome is not None
        if winner.outcome.role != "photo_indexed":
            error = PixoraError(
                f"superseded in the same batch by event {winner.event.offset}, which failed"
            )
            return dead_letter_publication(item.event, error)
        answer = PhotoIndexed.parse(winner.outcome.value)
        return self._indexed(
            item.upload, answer.faces, answer.faces_dropped, item.took_ms(), replayed=True
        )

    def _indexed(
        self,
        upload: PhotoUploaded,
        faces: list[FaceFound],
        dropped: int,
        took_ms: float,
        *,
        replayed: bool,
    ) -> Publication:
        event = PhotoIndexed(
            event_id=upload.event_id,
            session_id=upload.session_id,
            photo_id=upload.photo,
            face_count=len(faces),
            faces_dropped=dropped,
            faces=faces,
            model=self.engine.model,
            replayed=replayed,
            took_ms=took_ms,
        )
        return Publication("photo_indexed", upload.session_id, event.to_json())

    def _log(self, item: _Work) -> None:
        upload, outcome = item.upload, item.outcome
        assert outcome is not None
        log.info(
            "indexed topic=%s partition=%d offset=%d session=%s photo=%s faces=%s outcome=%s ms=%.0f",
            item.event.topic,
            item.event.partition,
            item.event.offset,
            upload.session_id if upload else "-",
            upload.photo if upload else "-",
            len(item.faces.faces) if item.faces else "-",
            outcome.role,
            item.took_ms(),
        )
