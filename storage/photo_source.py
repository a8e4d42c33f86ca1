"""Fetching a photo's bytes from where the platform put it: a local folder or an S3 bucket.

A `source` is `s3://bucket/key`, a bare key in the configured bucket, or (without S3) a path
under the local photo root. Anything that would read outside those places is refused, never
attempted: `../`, absolute paths, other URL schemes, other buckets.
"""

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

from schemas.errors import ImageTooLarge, PhotoNotFound, SourceRefused, SourceUnavailable

log = logging.getLogger(__name__)


class PhotoSource(Protocol):
    async def fetch(self, source: str) -> bytes: ...

    async def close(self) -> None: ...


def _checked_key(source: str) -> str:
    """A bare key, unchanged, after checking it cannot climb out of its root."""
    if "\x00" in source:
        raise SourceRefused(f"source {source!r} contains a NUL byte")
    if source.startswith(("/", "\\")):
        raise SourceRefused(
            f"source {source!r} is an absolute path; give a key under the photo root"
        )
    if ".." in source.replace("\\", "/").split("/"):
        raise SourceRefused(f"source {source!r} climbs out of the photo root with '..'")
    if not source.strip("/."):
        raise SourceRefused(f"source {source!r} names no file")
    return source


def _url_scheme(source: str) -> str | None:
    """The scheme of a URL-shaped source ("http" in http://...); None for a plain key.

    Only "scheme://" counts: a camera's "IMG:2024.jpg" is a file name, not a URL.
    """
    scheme, separator, _ = source.partition("://")
    if (
        separator
        and scheme
        and scheme[0].isalpha()
        and all(c.isalnum() or c in "+.-" for c in scheme)
    ):
        return scheme.lower()
    return None


class LocalPhotoSource:
    """Photos under one folder (the embedded mode)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes

    async def fetch(self, source: str) -> bytes:
        scheme = _url_scheme(source)
        if scheme:
            raise SourceRefused(f"source {source!r}: the {scheme}:// scheme is not served here")
        path = (self.root / _checked_key(source)).resolve()
        if not path.is_relative_to(self.root):
            raise SourceRefused(
                f"source {source!r} resolves outside the photo root (a symbolic link?)"
            )
        return await asyncio.to_thread(self._read, path, source)

    def _read(self, path: Path, source: str) -> bytes:
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise PhotoNotFound(f"source {source!r} is not a regular file")
            if size > self.max_bytes:
                raise ImageTooLarge(
                    f"source {source!r} is {size} bytes, over MAX_IMAGE_BYTES={self.max_bytes}"
                )
            return path.read_bytes()
        except FileNotFoundError as error:
            raise PhotoNotFound(f"source {source!r} does not exist under the photo root") from error
        except PermissionError as error:
            raise PhotoNotFound(f"source {source!r} is not readable: {error.strerror}") from error

    async def close(self) -> None:
        return None


class S3PhotoSource:
    """Photos in one S3 (or MinIO) bucket, read through aioboto3."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        access_key: str | None,
        secret_key: str | None,
        region: str,
        timeout_s: float,
        max_bytes: int,
    ) -> None:
        import aioboto3
        from botocore.config import Config

        self.bucket = bucket
        self.max_bytes = max_bytes
        self._session = aioboto3.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self._endpoint_url = endpoint_url
        # Retries are ours (the agent backs off while the partition waits), so botocore's own
        # are limited to one quick attempt more.
        self._config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        self._client: Any = None
        self._client_context: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            self._client_context = self._session.client(
                "s3", endpoint_url=self._endpoint_url, config=self._config
            )
            self._client = await self._client_context.__aenter__()
        return self._client

    def key_of(self, source: str) -> str:
        scheme = _url_scheme(source)
        if scheme is None:
            return _checked_key(source)
        if scheme != "s3":
            raise SourceRefused(f"source {source!r}: the {scheme}:// scheme is not served here")
        bucket, _, key = source.partition("://")[2].partition("/")
        if bucket != self.bucket:
            raise SourceRefused(
                f"source {source!r} is in bucket {bucket!r}; this service reads {self.bucket!r}"
            )
        # S3 keys are literal: "a//b" and "a/./b" are other objects than "a/b", so the key is
        # everything after the bucket's slash, byte for byte.
        return _checked_key(key)

    async def fetch(self, source: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.key_of(source)
        try:
            s3 = await self._s3()
            response = await s3.get_object(Bucket=self.bucket, Key=key)
            size = int(response.get("ContentLength") or 0)
            if size > self.max_bytes:
                response["Body"].close()
                raise ImageTooLarge(
                    f"s3://{self.bucket}/{key} is {size} bytes, over MAX_IMAGE_BYTES={self.max_bytes}"
                )
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise PhotoNotFound(f"s3://{self.bucket}/{key} does not exist") from error
            if code in ("NoSuchBucket",):
                raise SourceUnavailable(f"bucket {self.bucket!r} does not exist (yet?)") from error
            if status >= 500 or code in (
                "SlowDown",
                "RequestTimeout",
                "ServiceUnavailable",
                "InternalError",
            ):
                raise SourceUnavailable(
                    f"S3 answered {status} {code} for s3://{self.bucket}/{key}"
                ) from error
            raise PhotoNotFound(f"S3 refused s3://{self.bucket}/{key}: {status} {code}") from error
        except (BotoCoreError, OSError, TimeoutError) as error:
            raise SourceUnavailable(
                f"S3 unreachable for s3://{self.bucket}/{key}: {type(error).__name__}"
            ) from error

    async def close(self) -> None:
        if self._client_context is not None:
            await self._client_context.__aexit__(None, None, None)
            self._client = self._client_context = None
