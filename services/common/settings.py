"""One typed configuration for every process, read from the environment (prefix ``CRM_``).

Each process builds a ``Settings`` once at start-up (in its ``main``) and passes what it needs
down; nothing deeper in the code reads the environment.
"""
from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    # infrastructure
    home: str = Field(".crm", description="the project's data folder (CRM_HOME)")
    kafka_bootstrap: str = "127.0.0.1:9092"
    pg_dsn: str = "postgresql://crm@127.0.0.1:5432/crm"
    partitions: int = Field(4, ge=1, description="partition count of the crm.* topics")
    replication_factor: int = Field(1, ge=1)

    # HTTP services (loopback by default)
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # identity resolution
    default_region: str = Field("CN", description="region assumed for phone numbers without +country code")
    identity_limits: dict[str, int] = Field(
        default_factory=lambda: {"account_id": 1, "email": 5, "phone": 5, "anonymous_id": 100},
        description="most identifiers of a kind on one customer, as JSON "
                    "(CRM_IDENTITY_LIMITS='{\"email\": 3}'); kinds not given keep their default")

    # collector limits (Segment/RudderStack-like)
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    kafka_ack_timeout_s: float = 10.0

    # processors
    processor_id: str = "crm-processors"
    processor_stages: str = Field("identity,view", description="stages this worker runs, comma-separated")
    batch_size: int = 1000
    batch_within_s: float = 0.05
    processor_web_port: int = 6066

    log_level: str = "INFO"
    log_json: bool = True


def load() -> Settings:
    """Read the settings from the environment."""
    return Settings()
