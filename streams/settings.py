"""One typed settings object, read from the environment.

Names follow the platform's existing variables (`DATABASE_URL`, `S3_BUCKET_NAME`, ...), so no
prefix. Nothing set at all means the embedded mode: an in-memory Kafka-compatible broker and a
local PostgreSQL started by the CLI, photos from a local folder.
"""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderChoice = Literal["auto", "cuda", "cpu"]
ModelChoice = Literal["auto", "buffalo_l", "buffalo_s"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", frozen=True, populate_by_name=True
    )

    # Where things live. An unset broker or database URL selects the embedded one.
    kafka_broker_url: str | None = Field(default=None, description="kafka://host:port[,host:port]")
    kafka_group_id: str = "pixora-face"
    database_url: SecretStr | None = None
    vector_database_url: SecretStr | None = Field(
        default=None, description="the face store; falls back to DATABASE_URL"
    )
    # A statement unanswered for this long fails as "database unavailable" and is retried.
    database_command_timeout_s: float = Field(default=15.0, gt=0)
    data_dir: Path = Field(default=Path("var"), validation_alias=AliasChoices("PIXORA_DATA_DIR"))
    photo_root: Path = Field(default=Path("var/photos"), description="local photo folder")

    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket_name: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_timeout_s: float = 10.0

    # Topics.
    topic_photo_uploaded: str = "photo-uploaded"
    topic_photo_deleted: str = "photo-deleted"
    topic_session_deleted: str = "session-deleted"
    topic_search_requested: str = "search-requested"
    topic_search_results: str = "search-results"
    topic_photo_indexed: str = "photo-indexed"
    topic_partitions: int = Field(default=8, ge=1)
    topic_replication_factor: int = Field(default=1, ge=1)

    # Consumer group timing. Tansu completes a join after half the session timeout, so 6 s
    # (Kafka's smallest allowed by default) lets a worker consume 3 s after it starts;
    # heartbeats run on the event loop, which inference never blocks.
    kafka_session_timeout_s: float = Field(default=6.0, gt=0)
    kafka_heartbeat_interval_s: float = Field(default=1.0, gt=0)
    kafka_rebalance_timeout_s: float = Field(default=3.0, gt=0)
    # An inline selfie of MAX_SELFIE_BYTES is 4/3 as large in base64, and a dead letter carries
    # the whole original: 16 MiB holds both. The broker must accept as much (message.max.bytes).
    # How long the broker may hold a fetch that has nothing yet (see streams/transport.py).
    kafka_fetch_max_wait_ms: int = Field(default=20, ge=1)
    kafka_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024 * 1024)

    # Matching.
    face_similarity_threshold: float = Field(default=0.30, ge=-1.0, le=1.0)
    search_result_limit: int = Field(default=50, ge=1)
    # A search scans its session in this many slices side by side, each on a connection and a
    # core of the database: two halve the time of a large session on a 2-core machine. A
    # worker's pool holds this many connections and two more.
    search_parallel_scans: int = Field(default=2, ge=1, le=16)
    embedding_dimension: int = 512

    # Indexing.
    indexing_batch_size: int = Field(default=10, ge=1)
    # How long a batch waits for more uploads once it has one. The next batch fills while the
    # last is in inference, so a longer wait only delays the end of a burst.
    indexing_batch_window_s: float = Field(default=0.02, gt=0)
    max_faces_per_photo: int = Field(default=10, ge=1)
    max_photos_per_session: int = Field(default=1000, ge=1)
    min_detection_score: float = Field(default=0.5, ge=0.0, le=1.0)
    min_face_size_px: int = Field(default=20, ge=1)

    # Images. 100 MP admits every current camera (the largest common sensors are 61 MP) and
    # keeps a decoded frame under 300 MB; 64 MiB of encoded bytes covers the largest JPEGs.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    max_image_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_selfie_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    min_image_side_px: int = Field(default=32, ge=1)

    # Models.
    face_model: ModelChoice = "auto"
    insightface_root: Path = Path("~/.insightface")
    onnx_providers: ProviderChoice = "auto"
    onnx_threads: int = Field(default=0, ge=0, description="0: as many as the machine has cores")

    log_level: str = "INFO"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_broker_url is None

    @property
    def embedded_database(self) -> bool:
        return self.face_store_url is None

    @property
    def face_store_url(self) -> str | None:
        url = self.vector_database_url or self.database_url
        return url.get_secret_value() if url else None

    def s3_credentials(self) -> tuple[str | None, str | None]:
        """The access and secret key in clear, for the S3 client only: never log the result."""
        access = self.s3_access_key.get_secret_value() if self.s3_access_key else None
        secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key else None
        return access, secret

    @property
    def broker_bootstrap(self) -> str:
        """host:port[,host:port] for aiokafka, from the kafka:// URL Faust takes."""
        assert self.kafka_broker_url is not None, "the embedded broker sets KAFKA_BROKER_URL"
        return ",".join(part.removeprefix("kafka://") for part in self.kafka_broker_url.split(","))
