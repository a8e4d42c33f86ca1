"""Secrets given in the environment never reach a log line, a dead letter or an answer."""

import subprocess
import sys
from pathlib import Path

import aioboto3
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from streams.client import EventClient
from streams.embedded import free_loopback_port
from streams.settings import Settings
from tests.conftest import FIXTURES, new_session, start_worker
from tests.integration.events import index, search, upload
from tests.integration.faults import isolated

pytestmark = pytest.mark.integration

S3_SECRET = "s3-secret-Zq81xT4"
DB_PASSWORD = "db-password-Kp20wR7"


async def test_s3_secret_and_database_password_appear_in_no_log_and_no_event(
    settings: Settings, database: str, tmp_path: Path
) -> None:
    port = free_loopback_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    session_kwargs = {
        "aws_access_key_id": "pixora",
        "aws_secret_access_key": S3_SECRET,
        "region_name": "us-east-1",
    }
    async with aioboto3.Session(**session_kwargs).client("s3", endpoint_url=endpoint) as s3:
        await s3.create_bucket(Bucket="secret-photos")
        await s3.put_object(
            Bucket="secret-photos", Key="a/obama.jpg", Body=(FIXTURES / "obama.jpg").read_bytes()
        )
    # The embedded server trusts local connections, so a password in the URL is accepted and unused.
    with_password = database.replace("postgres:@", f"postgres:{DB_PASSWORD}@")
    own = isolated(settings, "secrets").model_copy(
        update={"vector_database_url": SecretStr(with_password)}
    )
    worker = start_worker(
        own,
        tmp_path / "worker.log",
        S3_BUCKET_NAME="secret-photos",
        S3_ENDPOINT_URL=endpoint,
        S3_ACCESS_KEY="pixora",
        S3_SECRET_KEY=S3_SECRET,
        LOG_LEVEL="DEBUG",
    )
    session = new_session()
    seen: list[str] = []
    try:
        async with EventClient(own) as client:
            answers = await index(
                client,
                [
                    upload(session, "a/obama.jpg"),
                    upload(session, "a/missing.jpg"),
                    upload(session, "s3://other/x.jpg"),
                ],
            )
            results = await search(client, session, (FIXTURES / "obama2.jpg").read_bytes())
        seen = [str(answer.document) for answer in answers.values()] + [str(results)]
    finally:
        worker.stop()
        moto.stop()

    assert sorted(answer.topic for answer in answers.values()) == sorted(
        [
            own.topic_photo_indexed,
            own.topic_photo_uploaded + ".dlq",
            own.topic_photo_uploaded + ".dlq",
        ]
    )
    assert results["status"] == "matched"
    for text in [worker.log(), *seen]:
        assert S3_SECRET not in text
        assert DB_PASSWORD not in text


def test_a_database_that_refuses_connections_is_reported_without_its_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://pixora:{DB_PASSWORD}@127.0.0.1:{free_loopback_port()}/pixora"

    finished = subprocess.run(
        [sys.executable, "-m", "streams", "migrate"],
        env={"VECTOR_DATABASE_URL": url, "PIXORA_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 1
    assert "face store unavailable" in finished.stderr
    assert DB_PASSWORD not in finished.stderr + finished.stdout
