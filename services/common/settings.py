"""One typed configuration for every process, read from the environment (prefix ``CRM_``).

Each process builds a ``Settings`` once at start-up (in its ``main``) and passes what it needs
down; nothing deeper in the code reads the environment.
"""
from __future__ import annotations

from pydantic import Field, field_validator
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

    # satisfaction indicators
    business_hours: dict = Field(
        default_factory=lambda: {"timezone": "Asia/Shanghai",
                                 "hours": {d: ["09:00", "18:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
                                 "holidays": []},
        description="service desk calendar as JSON: timezone, opening hours per weekday, holidays "
                    "(CRM_BUSINESS_HOURS); business-hours response and resolution times use it")
    indicator_max_lateness_s: float = Field(
        7 * 24 * 3600, gt=0,
        description="an event arriving more than this many seconds after its event time is kept in the "
                    "per-minute history but left out of the live windows (CRM_INDICATOR_MAX_LATENESS_S)")
    indicator_alerts: list[dict] = Field(
        default_factory=lambda: [
            {"name": "csat-low", "indicator": "csat", "window": "1h", "dimension": "channel", "below": 80,
             "min_count": 5},
            {"name": "abandonment-high", "indicator": "abandonment_rate", "window": "1h", "dimension": "queue",
             "above": 10, "min_count": 10},
            {"name": "service-level-low", "indicator": "service_level", "window": "1h", "dimension": "queue",
             "below": 80, "min_count": 10},
        ],
        description="threshold alerts as a JSON list (CRM_INDICATOR_ALERTS), each: name, indicator, window, "
                    "dimension (all|channel|queue|agent|segment), optional member, below or above, min_count")
    indicator_refresh_s: float = Field(30.0, gt=0, description="how often the live stream re-sends a snapshot "
                                                               "(values change as time passes, too)")

    # customer state and its feed
    customer_state_rules: str = Field(
        "", description="the lifecycle, value and segment rules file (CRM_CUSTOMER_STATE_RULES); "
                        "empty: the shipped config/customer-state.toml")
    state_tick_s: float = Field(60.0, gt=0, description="how often customers whose state may have changed with "
                                                        "time alone (churn, windows) are re-evaluated")
    feed_relay_poll_s: float = Field(0.05, gt=0, description="how often the feed relay looks for new outbox rows "
                                                             "when idle")

    # webhooks (crm-webhooks): the change feed relayed to subscribed HTTP endpoints
    webhooks_id: str = Field("crm-webhooks", description="consumer group and offset namespace of the dispatchers")
    webhooks_host: str = "127.0.0.1"
    webhooks_port: int = Field(8090, description="the dispatcher's /healthz and /metrics")
    webhooks_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800], min_length=1,
        description="seconds to wait after the 1st, 2nd, ... failed attempt (JSON list); after the last, the "
                    "delivery is failed (CRM_WEBHOOKS_RETRY_SCHEDULE_S)")
    webhooks_retry_jitter: float = Field(0.2, ge=0, lt=1, description="each wait is spread by ± this fraction")
    webhooks_timeout_s: float = Field(10.0, gt=0, description="the most one attempt may take, answer included")
    webhooks_lease_s: float = Field(60.0, gt=0, description="how long a claimed delivery stays reserved for its "
                                                            "dispatcher (more than webhooks_timeout_s)")
    webhooks_concurrency: int = Field(64, ge=1, description="deliveries one dispatcher sends at once")
    webhooks_per_subscription: int = Field(4, ge=1, description="deliveries of one subscription in flight at once, "
                                                               "every dispatcher counted")
    webhooks_poll_s: float = Field(0.5, gt=0, description="how often a dispatcher looks for due deliveries when idle")
    webhooks_previous_secret_s: float = Field(24 * 3600, ge=0, description="how long a rotated-out secret still "
                                                                         "signs deliveries beside the new one")

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("business_hours")
    @classmethod
    def _calendar(cls, value: dict) -> dict:
        from projections.business_hours import Calendar

        Calendar.from_config(value)
        return value

    @field_validator("customer_state_rules")
    @classmethod
    def _state_rules(cls, value: str) -> str:
        from projections.customer_state import load_rules

        load_rules(value or None)
        return value

    @field_validator("indicator_alerts")
    @classmethod
    def _alerts(cls, value: list[dict]) -> list[dict]:
        from projections.alerts import rules

        rules(value)
        return value

    @field_validator("webhooks_retry_schedule_s")
    @classmethod
    def _webhook_schedule(cls, value: list[float]) -> list[float]:
        if any(wait <= 0 for wait in value):
            raise ValueError("every wait must be more than 0 seconds")
        return value

    @field_validator("webhooks_lease_s")
    @classmethod
    def _webhook_lease(cls, value: float, info) -> float:
        timeout = info.data.get("webhooks_timeout_s")
        if timeout is not None and value <= timeout:
            raise ValueError(f"must be more than webhooks_timeout_s ({timeout:g}): a lease outlives its attempt")
        return value


def load() -> Settings:
    """Read the settings from the environment."""
    return Settings()
