"""The index agent's work: photo-uploaded events in, faces stored, photo-indexed events out.

A batch is handled in four steps: parse and check each event; answer from the store the
events it already holds with the same model (a redelivery or a replay), and refuse photos over
the session limit; fetch, decode, detect and embed the rest, the blocking part in a worker
thread; save the whole batch in one transaction. Only then does the caller acknowledge the
batch's offsets.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

from agents.events import IncomingEvent, Publication, dead_letter_publication, rounded_box
from agents.retrying import Backoff, retry_transient
from faces.decoding import EncodedPhoto
from faces.engine import FaceEngine, PhotoFaces
from schemas.errors import PixoraError, SessionFull, StorageRejected
from schemas.events import FaceFound, PhotoIndexed, PhotoUploaded
from storage.face_store import FaceStore, IndexedPhoto, PhotoRecord, StoredFace
from storage.photo_source import PhotoSource

log = logging.getLogger(__name__)

# An error we did not foresee (a bug, a model crash on one odd image) is retried this many
# times before the photo is dead-lettered, so one poison photo cannot stall its partition.
UNEXPECTED_ERROR_ATTEMPTS = 3
FETCH_CONCURRENCY = 4


# Indexing waits as long as it takes: a photo is never skipped because a dependency was down.
INDEXING_BACKOFF = Backoff(max_delay_s=10.0)


@dataclass(frozen=True)
class IndexLimits:
    max_photos_per_session: int = 1000
    max_image_pixels: int = 100_000_000
    min_image_side_px: int = 32


@dataclass
class _SessionRoom:
    """How full a session is: photos stored, plus those this batch will store."""

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
    started: float = field(default_factory=time.perf_counter)
    work_ms: float | None = None  # fetch, decode, detect and embed of this photo alone

    def took_ms(self) -> float:
        elapsed = (
            self.work_ms
            if self.work_ms is not None
            else (time.perf_counter() - self.started) * 1000
        )
        return round(elapsed, 1)


class PhotoIndexer:
    def __init__(
        self,
        engine: FaceEngine,
        store: FaceStore,
        source: PhotoSource,
        executor: Executor,
        limits: IndexLimits,
        backoff: Backoff = INDEXING_BACKOFF,
    ) -> None:
        self.engine = engine
        self.store = store
        self.source = source
        self.executor = executor
        self.limits = limits
        self.backoff = backoff
        # At most this many photos in flight from the store at once, whatever the batch size.
        self._fetching = asyncio.Semaphore(FETCH_CONCURRENCY)

    async def index_batch(self, events: Sequence[IncomingEvent]) -> list[Publication]:
        """Index a batch; return one publication per event, in event order."""
        work = [_Work(event) for event in events]
        for item in work:
            self._parse(item)

        pending = [item for item in work if item.outcome is None]
        rooms = await self._triage(pending)
        pending = [item for item in pending if item.superseded_by is None]

        to_analyze = [item for item in pending if item.outcome is None]
        # Every photo of the batch is fetched at once, so S3 round trips overlap each other and
        # the inference of the photos ahead of them; inference itself runs one photo at a time.
        fetches = [asyncio.ensure_future(self._fetch(item)) for item in to_analyze]
        try:
            for item, fetch in zip(to_analyze, fetches, strict=True):
                await self._analyze(item, fetch)
        finally:
            for fetch in fetches:
                fetch.cancel()

        analyzed = [item for item in pending if item.outcome is None and item.faces is not None]
        self._enforce_session_limits(analyzed, rooms)
        await self._save([item for item in analyzed if item.outcome is None])
        for item in work:
            if item.superseded_by is not None:
                item.outcome = self._like(item, item.superseded_by)
        for item in work:
            self._log(item)
        return [item.outcome for item in work if item.outcome is not None]

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
        photo_ids = [item.upload.photo for item in items if item.upload]
        known = await retry_transient(
            partial(self.store.known_photos, session_id, photo_ids),
            "reading known photos",
            self.backoff,
        )
        count = await retry_transient(
            partial(self.store.photo_count, session_id), "counting photos", self.backoff
        )
        room = _SessionRoom(session_id, count, set(known))
        # Within one batch a photo uploaded twice is indexed once, from its last event.
        last_event_of = {item.upload.photo: item for item in items if item.upload}
        for item in items:
            assert item.upload is not None
            photo_id = item.upload.photo
            record = known.get(photo_id)
            if record is not None and self._is_replay(item.upload, record):
                item.outcome = self._replayed(item.upload, record, item.took_ms())
            elif last_event_of[photo_id] is not item:
                item.superseded_by = last_event_of[photo_id]
            elif photo_id not in room.stored and count >= self.limits.max_photos_per_session:
                item.outcome = self._session_full(item, room)  # full already: not even fetched
        return room

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

    def _session_full(self, item: _Work, room: "_SessionRoom") -> Publication:
        error = SessionFull(
            f"session {room.session_id!r} already holds {room.count} photos, "
            f"the limit MAX_PHOTOS_PER_SESSION={self.limits.max_photos_per_session}"
        )
        return dead_letter_publication(item.event, error)

    async def _fetch(self, item: _Work) -> bytes:
        assert item.upload is not None
        source = item.upload.source
        async with self._fetching:
            return await retry_transient(
                partial(self.source.fetch, source), f"fetching {source!r}", self.backoff
            )

    async def _analyze(self, item: _Work, fetch: "asyncio.Future[bytes]") -> None:
        assert item.upload is not None
        started = time.perf_counter()
        for attempt in range(1, UNEXPECTED_ERROR_ATTEMPTS + 1):
            try:
                data = await (fetch if attempt == 1 else self._fetch(item))
                loop = asyncio.get_running_loop()
                item.faces = await loop.run_in_executor(self.executor, self._faces_of, data)
                item.work_ms = (time.perf_counter() - started) * 1000
                return
            except PixoraError as error:
                item.outcome = dead_letter_publication(item.event, error, attempt)
                return
            except Exception as error:
                log.exception(
                    "unexpected error indexing photo %r (attempt %d)", item.upload.photo, attempt
                )
                if attempt == UNEXPECTED_ERROR_ATTEMPTS:
                    item.outcome = dead_letter_publication(item.event, error, attempt)

    def _faces_of(self, data: bytes) -> PhotoFaces:
        photo = EncodedPhoto(
            data, max_pixels=self.limits.max_image_pixels, min_side_px=self.limits.min_image_side_px
        )
        return self.engine.index_encoded(photo)

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
        try:
            await retry_transient(
                partial(self.store.save, photos),
                f"saving a batch of {len(photos)} photos",
                self.backoff,
            )
        except StorageRejected as error:
            # One photo's rows broke a rule of the database; save the others one by one so
            # the bad one is dead-lettered alone instead of holding back its whole batch.
            log.warning(
                "batch of %d photos refused (%s); saving them one by one", len(photos), error
            )
            analyzed = await self._save_one_by_one(analyzed, photos)

        for item in analyzed:
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
