"""Where photos may be read from: inside the photo root or the one bucket, nowhere else."""

from pathlib import Path

import pytest

from schemas.errors import ImageTooLarge, PhotoNotFound, SourceRefused
from storage.photo_source import LocalPhotoSource, S3PhotoSource
from tests.conftest import FIXTURES

MAX_BYTES = 1024 * 1024


@pytest.fixture
def photo_root(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "sess-1").mkdir(parents=True)
    (root / "sess-1" / "IMG_0001.jpg").write_bytes((FIXTURES / "obama_small.jpg").read_bytes())
    (tmp_path / "secret.jpg").write_bytes(b"outside the root")
    return root


@pytest.fixture
def local(photo_root: Path) -> LocalPhotoSource:
    return LocalPhotoSource(photo_root, max_bytes=MAX_BYTES)


def bucket_source() -> S3PhotoSource:
    return S3PhotoSource(
        "pixora-photos",
        endpoint_url="http://127.0.0.1:9",
        access_key="test",
        secret_key="test",
        region="us-east-1",
        timeout_s=1.0,
        max_bytes=MAX_BYTES,
    )


async def test_a_file_under_the_root_is_read(local: LocalPhotoSource) -> None:
    expected = (FIXTURES / "obama_small.jpg").read_bytes()

    data = await local.fetch("sess-1/IMG_0001.jpg")

    assert data == expected


async def test_a_dot_segment_inside_the_root_is_read(local: LocalPhotoSource) -> None:
    expected = (FIXTURES / "obama_small.jpg").read_bytes()

    data = await local.fetch("./sess-1/./IMG_0001.jpg")

    assert data == expected


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("../x.jpg", "'..'"),
        ("../secret.jpg", "'..'"),
        ("a/../../x", "'..'"),
        ("sess-1/../IMG_0001.jpg", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("\\\\server\\share\\x.jpg", "absolute path"),
        ("http://host/x.jpg", "http:// scheme"),
        ("file:///etc/passwd", "file:// scheme"),
        ("s3://pixora-photos/sess-1/IMG_0001.jpg", "s3:// scheme"),
        ("sess-1/IMG_0001.jpg\x00.png", "NUL byte"),
        ("", "names no file"),
        (".", "names no file"),
    ],
)
async def test_sources_outside_the_root_are_refused(
    local: LocalPhotoSource, source: str, reason: str
) -> None:
    with pytest.raises(SourceRefused) as refused:
        await local.fetch(source)

    assert reason in str(refused.value)
    assert refused.value.retriable is False
    assert refused.value.code == "source_refused"


async def test_a_symlink_inside_the_root_pointing_outside_is_refused(
    local: LocalPhotoSource, photo_root: Path
) -> None:
    (photo_root / "sess-1" / "escape.jpg").symlink_to(photo_root.parent / "secret.jpg")

    with pytest.raises(SourceRefused, match="resolves outside the photo root"):
        await local.fetch("sess-1/escape.jpg")


async def test_a_symlinked_folder_pointing_outside_is_refused(
    local: LocalPhotoSource, photo_root: Path
) -> None:
    (photo_root / "elsewhere").symlink_to(photo_root.parent, target_is_directory=True)

    with pytest.raises(SourceRefused, match="resolves outside the photo root"):
        await local.fetch("elsewhere/secret.jpg")


async def test_a_symlink_staying_inside_the_root_is_read(
    local: LocalPhotoSource, photo_root: Path
) -> None:
    (photo_root / "latest.jpg").symlink_to(photo_root / "sess-1" / "IMG_0001.jpg")

    data = await local.fetch("latest.jpg")

    assert data == (FIXTURES / "obama_small.jpg").read_bytes()


async def test_a_root_given_through_a_symlink_still_serves_its_files(
    tmp_path: Path, photo_root: Path
) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(photo_root, target_is_directory=True)
    source = LocalPhotoSource(alias, max_bytes=MAX_BYTES)

    data = await source.fetch("sess-1/IMG_0001.jpg")

    assert data == (FIXTURES / "obama_small.jpg").read_bytes()


async def test_a_missing_file_is_photo_not_found(local: LocalPhotoSource) -> None:
    with pytest.raises(PhotoNotFound, match="does not exist") as missing:
        await local.fetch("sess-1/IMG_9999.jpg")

    assert missing.value.retriable is False


async def test_a_folder_is_photo_not_found(local: LocalPhotoSource) -> None:
    with pytest.raises(PhotoNotFound, match="not a regular file"):
        await local.fetch("sess-1")


async def test_a_file_over_max_bytes_is_too_large(photo_root: Path) -> None:
    size = len((FIXTURES / "obama_small.jpg").read_bytes())
    source = LocalPhotoSource(photo_root, max_bytes=size - 1)

    with pytest.raises(ImageTooLarge, match=f"is {size} bytes, over MAX_IMAGE_BYTES={size - 1}"):
        await source.fetch("sess-1/IMG_0001.jpg")


async def test_a_file_of_exactly_max_bytes_is_read(photo_root: Path) -> None:
    size = len((FIXTURES / "obama_small.jpg").read_bytes())
    source = LocalPhotoSource(photo_root, max_bytes=size)

    data = await source.fetch("sess-1/IMG_0001.jpg")

    assert len(data) == size


def test_key_of_accepts_an_s3_url_in_the_configured_bucket() -> None:
    source = bucket_source()

    key = source.key_of("s3://pixora-photos/sess-1/IMG_0001.JPG")

    assert key == "sess-1/IMG_0001.JPG"


def test_key_of_accepts_a_bare_key() -> None:
    source = bucket_source()

    key = source.key_of("sess-1/IMG_0001.JPG")

    assert key == "sess-1/IMG_0001.JPG"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("s3://other-bucket/sess-1/IMG_0001.JPG", "in bucket 'other-bucket'"),
        ("s3://pixora-photos.evil/sess-1/x.jpg", "in bucket 'pixora-photos.evil'"),
        ("https://pixora-photos.s3.amazonaws.com/x.jpg", "https:// scheme"),
        ("file:///etc/passwd", "file:// scheme"),
        ("gs://pixora-photos/x.jpg", "gs:// scheme"),
        ("s3://pixora-photos/../other/x.jpg", "'..'"),
        ("s3://pixora-photos/", "names no file"),
        ("../x.jpg", "'..'"),
        ("/etc/passwd", "absolute path"),
        ("sess-1/x\x00.jpg", "NUL byte"),
    ],
)
def test_key_of_refuses_other_buckets_schemes_and_escapes(source: str, reason: str) -> None:
    bucket = bucket_source()

    with pytest.raises(SourceRefused) as refused:
        bucket.key_of(source)

    assert reason in str(refused.value)


async def test_a_refused_s3_source_is_refused_before_any_connection() -> None:
    bucket = bucket_source()

    with pytest.raises(SourceRefused):
        await bucket.fetch("s3://other-bucket/x.jpg")

    assert bucket._client is None
    await bucket.close()


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("s3://pixora-photos/sess-1//IMG_0001.JPG", "sess-1//IMG_0001.JPG"),
        ("sess-1/./IMG.JPG", "sess-1/./IMG.JPG"),
    ],
)
def test_key_of_keeps_an_s3_key_byte_for_byte(source: str, key: str) -> None:
    bucket = bucket_source()

    fetched = bucket.key_of(source)

    assert fetched == key
