"""Putting local photos where a production worker reads them: the configured S3 bucket."""

from pathlib import Path

from schemas.events import photo_id_from_source
from streams.settings import Settings


async def upload_to_s3(
    settings: Settings, files: list[Path], session_id: str
) -> list[tuple[str, str]]:
    """Upload each file as `<session>/<file name>`; return (s3 source, photo id) pairs."""
    import aioboto3

    access_key, secret_key = settings.s3_credentials()
    session = aioboto3.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=settings.s3_region,
    )
    staged = []
    async with session.client("s3", endpoint_url=settings.s3_endpoint_url) as s3:
        for path in files:
            key = f"{session_id}/{path.name}"
            await s3.put_object(Bucket=settings.s3_bucket_name, Key=key, Body=path.read_bytes())
            staged.append(
                (f"s3://{settings.s3_bucket_name}/{key}", photo_id_from_source(path.name))
            )
    return staged
