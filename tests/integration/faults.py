"""Fault injection for the reliability tests: isolated workers and a misbehaving S3 in front of moto."""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import ClientSession, web

from storage.face_store import FaceStore
from streams.settings import Settings


def isolated(settings: Settings, tag: str) -> Settings:
    """The same broker and database, but topics and a consumer group of this test's own."""
    prefix = f"{tag}-{uuid.uuid4().hex[:6]}"
    return settings.model_copy(
        update={
            "kafka_group_id": f"pixora-{prefix}",
            "topic_photo_uploaded": f"{prefix}-photo-uploaded",
            "topic_photo_deleted": f"{prefix}-photo-deleted",
            "topic_session_deleted": f"{prefix}-session-deleted",
            "topic_search_requested": f"{prefix}-search-requested",
            "topic_search_results": f"{prefix}-search-results",
            "topic_photo_indexed": f"{prefix}-photo-indexed",
        }
    )


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def photos_at_least(store: FaceStore, session_id: str, count: int) -> bool:
    return await store.photo_count(session_id) >= count


class FlakyS3:
    """An HTTP proxy to a moto S3 server that fails its first requests on purpose.

    The first `errors` requests get a 503 SlowDown, the next `stalls` hang longer than the
    client's timeout, and every request after that is forwarded unchanged.
    """

    def __init__(self, upstream: str, *, errors: int, stalls: int, stall_s: float) -> None:
        self.upstream = upstream
        self.errors, self.stalls, self.stall_s = errors, stalls, stall_s
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._client: ClientSession | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._client = ClientSession()

    async def stop(self) -> None:
        if self._client:
            await self._client.close()
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.requests <= self.errors:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=503, body=body, content_type="application/xml")
        if self.requests <= self.errors + self.stalls:
            await asyncio.sleep(self.stall_s)
        assert self._client is not None
        headers = {name: value for name, value in request.headers.items() if name.lower() != "host"}
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            passed = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=upstream.status, body=body, headers=passed)
