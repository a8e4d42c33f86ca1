"""The search agent's work: a selfie in, the session's photos of that person out.

The selfie's largest face is embedded and compared, exactly, with every face of the same
session and model; a photo matches when its best face reaches the threshold. The selfie and
its embedding are never stored.
"""

import asyncio
import base64
import binascii
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

from agents.events import (
    REASON_MAX_CHARS,
    IncomingEvent,
    Publication,
    dead_letter_publication,
    rounded_box,
)
from agents.retrying import Backoff, retry_transient
from faces.decoding import EncodedPhoto, ImageLimits
from faces.engine import EmbeddedFace, FaceEngine
from schemas.errors import ImageTooLarge, InvalidEvent, PixoraError
from schemas.events import (
    PhotoMatch,
    SearchRequested,
    SearchResults,
    SearchStatus,
    peek_field,
    printable,
)
from storage.face_store import FaceStore
from storage.photo_source import PhotoSource

log = logging.getLogger(__name__)


# A guest is waiting: a database outage is retried for about half a minute, then the request is
# answered with status "error" instead of holding the partition.
SEARCH_BACKOFF = Backoff(first_delay_s=0.5, max_delay_s=8.0, max_attempts=6)


@dataclass(frozen=True)
class SearchPolicy:
    default_threshold: float = 0.30
    max_limit: int = 50
    max_selfie_bytes: int = 8 * 1024 * 1024
    image: ImageLimits = field(default_factory=ImageLimits)


class SelfieSearcher:
    def __init__(
        self,
        engine: FaceEngine,
        store: FaceStore,
        source: PhotoSource,
        executor: Executor,
        policy: SearchPolicy,
        backoff: Backoff = SEARCH_BACKOFF,
    ) -> None:
        self.engine = engine
        self.store = store
        self.source = source
        self.executor = executor
        self.policy = policy
        self.backoff = backoff

    async def answer(self, event: IncomingEvent) -> list[Publication]:
        """The search-results event for one request; also a dead letter when it cannot be answered.

        A request too broken to name its request_id gets an `invalid_request` answer nobody can
        match, so it is dead-lettered as well, where an operator sees the original.
        """
        started = time.perf_counter()
        request: SearchRequested | None = None
        unanswerable: PixoraError | None = None
        try:
            request = SearchRequested.parse(event.value)
            self._check_limit(request)
            results = await self._search(request, started)
        except PixoraError as error:
            status: SearchStatus = "error" if error.retriable else "invalid_request"
            results = self._failure(event, request, status, str(error), started)
            if not results.request_id:
                unanswerable = error
        except Exception as error:
            log.exception("unexpected error answering search at offset %d", event.offset)
            results = self._failure(
                event, request, "error", f"internal error: {type(error).__name__}", started
            )

        log.info(
            "searched topic=%s partition=%d offset=%d session=%s request=%s status=%s matches=%d ms=%.0f",
            event.topic,
            event.partition,
            event.offset,
            results.session_id or "-",
            results.request_id or "-",
            results.status,
            len(results.matches),
            results.took_ms,
        )
        answer = Publication("search_results", results.session_id or None, results.to_json())
        if unanswerable is None:
            return [answer]
        return [answer, dead_letter_publication(event, unanswerable, role="search_dead_letter")]

    def _check_limit(self, request: SearchRequested) -> None:
        if request.limit is not None and request.limit > self.policy.max_limit:
            raise InvalidEvent(
                f"limit {request.limit} is above SEARCH_RESULT_LIMIT={self.policy.max_limit}"
            )

    async def _search(self, request: SearchRequested, started: float) -> SearchResults:
        threshold = (
            self.policy.default_threshold if request.threshold is None else request.threshold
        )
        limit = request.limit or self.policy.max_limit
        data = await self._selfie_bytes(request)
        loop = asyncio.get_running_loop()
        face = await loop.run_in_executor(self.executor, self._selfie_face, data)

        def answer(
            status: SearchStatus, matches: list[PhotoMatch], face: EmbeddedFace | None
        ) -> SearchResults:
            return SearchResults(
                request_id=request.request_id,
                session_id=request.session_id,
                status=status,
                matches=matches,
                query_bbox=rounded_box(face.bbox) if face else None,
                query_det_score=round(face.det_score, 4) if face else None,
                threshold=threshold,
                limit=limit,
                model=self.engine.model,
                took_ms=round((time.perf_counter() - started) * 1000, 1),
            )

        if face is None:
            return answer("no_face", [], None)
        found = await retry_transient(
            lambda: self.store.search(
                request.session_id, self.engine.model, face.embedding, threshold, limit
            ),
            "searching the face store",
            self.backoff,
        )
        matches = [
            PhotoMatch(
                photo_id=match.photo_id,
                similarity=round(match.similarity, 4),
                bbox=rounded_box(match.bbox),
            )
            for match in found
        ]
        return answer("matched" if matches else "no_match", matches, face)

    async def _selfie_bytes(self, request: SearchRequested) -> bytes:
        cap = self.policy.max_selfie_bytes
        if request.image_b64 is not None:
            # Base64 carries 3 bytes in 4 characters: a text this long cannot fit the cap, so it
            # is refused before any of it is decoded.
            if len(request.image_b64) > (cap * 4) // 3 + 4:
                raise ImageTooLarge(f"image_b64 holds more than MAX_SELFIE_BYTES={cap} bytes")
            try:
                # Line-wrapped (MIME) base64 is common; the wrapping is not part of the data.
                data = base64.b64decode("".join(request.image_b64.split()), validate=True)
            except (binascii.Error, ValueError) as error:
                raise InvalidEvent(f"image_b64 is not valid base64: {error}") from error
        else:
            assert request.source is not None
            source = request.source
            data = await retry_transient(
                partial(self.source.fetch, source), "fetching the selfie", self.backoff
            )
        if len(data) > cap:
            raise ImageTooLarge(f"the selfie is {len(data)} bytes, over MAX_SELFIE_BYTES={cap}")
        return data

    def _selfie_face(self, data: bytes) -> EmbeddedFace | None:
        return self.engine.selfie_encoded(EncodedPhoto.within(data, self.policy.image))

    def _failure(
        self,
        event: IncomingEvent,
        request: SearchRequested | None,
        status: SearchStatus,
        reason: str,
        started: float,
    ) -> SearchResults:
        return SearchResults(
            request_id=request.request_id
            if request
            else (peek_field(event.value, "request_id") or ""),
            session_id=request.session_id
            if request
            else (peek_field(event.value, "session_id") or ""),
            status=status,
            model=self.engine.model,
            took_ms=round((time.perf_counter() - started) * 1000, 1),
            error=printable(reason)[:REASON_MAX_CHARS],
        )
