"""One typed configuration for every process, read from the environment (prefix ``CRM_``).

Each process builds a ``Settings`` once at start-up (in its ``main``) and passes what it needs
down; nothing deeper in the code reads the environment.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic import SecretStr, model_validator  # security: Kafka and PostgreSQL transport
from pydantic_settings import BaseSettings, SettingsConfigDict
from events.identifiers import BLOCKED_VALUES, blocked_values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    # infrastructure
    home: str = Field(".crm", description="the project's data folder (CRM_HOME)")
    kafka_bootstrap: str = "127.0.0.1:9092"
    pg_dsn: str = "postgresql://crm@127.0.0.1:5432/crm"
    pg_service_user: str = Field("crm_service", description="the services' least-privilege role, which `crm db "
                                                            "migrate` (run as the owner) grants row access to; "
                                                            "empty: grant nothing")
    partitions: int = Field(4, ge=1, description="partition count of the crm.* topics")
    replication_factor: int = Field(1, ge=1)

    # security: Kafka and PostgreSQL transport (docs/transport-security.md). Secrets come only from the
    # environment (or files outside the repository) and are never logged: SecretStr prints as **********.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how every Kafka client connects (CRM_KAFKA_SECURITY_PROTOCOL)")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(None, description="CRM_KAFKA_SASL_PASSWORD; never logged")
    kafka_ssl_cafile: str | None = Field(None, description="PEM file of the CA(s) that signed the brokers' "
                                                           "certificates; unset: the system's trusted CAs")
    kafka_ssl_certfile: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    kafka_ssl_keyfile: str | None = Field(None, description="PEM private key of the client certificate")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of an encrypted client key")
    kafka_ssl_check_hostname: bool = Field(True, description="check that a broker's certificate names the host "
                                                             "connected to (leave on outside tests)")
    pg_password: SecretStr | None = Field(
        None, description="CRM_PG_PASSWORD, added to CRM_PG_DSN when connecting (keep it out of the DSN); "
                          "libpq's PGPASSWORD / PGPASSFILE (~/.pgpass) work too")
    pg_sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None, description="libpq sslmode, merged into CRM_PG_DSN (unset: the DSN's or libpq's own, prefer)")
    pg_sslrootcert: str | None = Field(None, description="CA file checking the server (verify-ca, verify-full)")
    pg_sslcert: str | None = Field(None, description="client certificate (certificate authentication)")
    pg_sslkey: str | None = Field(None, description="private key of the client certificate")

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

    identity_blocked: list[str] = Field(
        default_factory=lambda: sorted(BLOCKED_VALUES),
        description="placeholder values never taken as identifiers (trimmed, case-insensitive), as a JSON list "
                    "(CRM_IDENTITY_BLOCKED='[\"null\", \"test@test.com\"]'); replaces the default list. Phone "
                    "numbers of one repeated digit are always refused")

    @property
    def blocked(self) -> frozenset[str]:
        """``identity_blocked`` as ``events.identifiers.normalize`` takes it."""
        return blocked_values(self.identity_blocked)

    # personal data: envelope encryption under the master key (services/common/vault.py)
    master_key: SecretStr | None = Field(None, description="base64 of 32 random bytes (CRM_MASTER_KEY); wraps every "
                                                           "subject's data key. Never stored by the platform")
    master_key_file: str = Field("", description="a file holding the master key instead (CRM_MASTER_KEY_FILE)")
    vault_cache_s: float = Field(30.0, ge=0, description="how long a process keeps a subject's key in memory; a "
                                                        "shred is announced and drops it at once")

    # collector limits (Segment/RudderStack-like)
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    kafka_ack_timeout_s: float = 10.0

    # processors
    processor_id: str = "crm-processors"
    processor_stages: str = Field("identity,view", description="stages this worker runs, comma-separated")
    batch_size: int = 1000
    batch_within_s: float = 0.01  # at most this long for a batch to fill: fresher views when quiet (full batches under load)
    processor_web_port: int = 6066

    # satisfaction indicators
    business_hours: dict = Field(
        default_factory=lambda: {"timezone": "Asia/Shanghai",
                                 "hours": {d: ["09:00", "18:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
                                 "holidays": []},
        description="service desk calendar as JSON: timezone, opening hours per weekday, holidays "
                    "(CRM_BUSINESS_HOURS); business-hours response and resolution times use it")
    indicator_max_lateness_s: float = Field(
        30 * 24 * 3600, gt=0,  # the longest window (30d): nothing within it is left out
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
    indicator_min_sample: int = Field(5, ge=1, description="the dashboard marks a value with fewer samples than "
                                                           "this as a small sample (CRM_INDICATOR_MIN_SAMPLE): "
                                                           "CSAT 0 % from one answer is not a trend")
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
    webhooks_allowed_hosts: str = Field("", description="comma-separated host names (or addresses) webhooks may "
                                                        "reach although they are loopback, private, link-local or "
                                                        "metadata addresses; empty (the default): none")
    webhooks_previous_secret_s: float = Field(24 * 3600, ge=0, description="how long a rotated-out secret still "
                                                                         "signs deliveries beside the new one")

    # security: API keys, rate limits (services/common/auth.py, README: Security and privacy)
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="how long a dashboard session lasts "
                                 "(an operator's sign-in; a wall screen signs in again after it)")
    auth_cache_s: float = Field(5.0, ge=0, description="how long a process trusts a verified API key before asking "
                                                       "PostgreSQL again: a revoked key is refused within this time")
    auth_stale_s: float = Field(300.0, ge=0, description="while PostgreSQL is unreachable, keys verified within this "
                                                         "many seconds stay accepted (others get 503); 0: none")
    rate_limit_per_s: float = Field(2000.0, gt=0, description="default sustained rate per API key: requests/s on the "
                                                              "query API, events/s on the collector (a key's own "
                                                              "rate overrides it)")
    rate_limit_burst: int = Field(20000, ge=1, description="default burst per API key (requests or events)")
    source_rate_limit_per_s: float = Field(2000.0, gt=0, description="events/s per CloudEvent source on the "
                                                                     "collector, whichever key sends them")
    source_rate_limit_burst: int = Field(20000, ge=1, description="burst of events per CloudEvent source")
    ip_rate_limit_per_s: float = Field(20.0, gt=0, description="requests/s per client IP that present no valid "
                                                               "secret key (missing or bad keys, publishable keys)")
    ip_rate_limit_burst: int = Field(200, ge=1, description="burst of those requests per client IP")
    trusted_proxies: str = Field("", description="comma-separated addresses (or networks) of the reverse proxies "
                                                 "whose X-Forwarded-For and X-Forwarded-Proto are believed; empty "
                                                 "(the default): none, the client is the connection's peer")
    api_key: SecretStr = Field(SecretStr(""), description="the API key this client sends (CRM_API_KEY): "
                                                          "crm-simulator; never logged")

    # channel adapters (services/ingest/adapters, services/mail; README: Channel adapters)
    public_url: str = Field("", description="the collector's URL as callers outside see it (https://crm.example.com), "
                                            "used in survey links and to check Twilio signatures; empty: the URL "
                                            "each request was made to")
    twilio_auth_token: SecretStr | None = Field(None, description="the Twilio account's auth token; Twilio signs "
                                                                  "its callbacks with it (CRM_TWILIO_AUTH_TOKEN)")
    shopify_webhook_secret: SecretStr | None = Field(None, description="the Shopify app's client secret; Shopify "
                                                                       "signs order webhooks with it")
    woocommerce_webhook_secret: SecretStr | None = Field(None, description="the secret of the WooCommerce "
                                                                           "webhooks (WooCommerce → Settings → "
                                                                           "Advanced → Webhooks)")
    survey_link_days: float = Field(14.0, gt=0, le=365, description="how long a survey link can be answered")
    tracker_cookie_days: int = Field(365, ge=1, le=730, description="lifetime of the web tracker's anonymous-id "
                                                                    "cookie")
    mail_host: str = "127.0.0.1"
    mail_port: int = Field(2525, description="the SMTP receiver's port (crm-mail)")
    mail_web_port: int = Field(8025, description="crm-mail's /healthz and /metrics")
    mail_domains: str = Field("shop.example.com", description="the company's own mail domains, comma-separated: "
                                                              "mail from them is email.sent, to them email.received")
    mail_capture_address: str = Field("crm-capture@shop.example.com",
                                      description="BCC this address (or relay through crm-mail) to capture "
                                                  "outbound mail as email.sent")
    mail_fax_senders: str = Field("", description="addresses of fax-to-mail gateways, comma-separated: their "
                                                  "mail with a PDF or TIFF attachment is fax.received")
    mail_max_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="largest message crm-mail accepts")
    mail_relay_host: str = Field("", description="smarthost (host or host:port) crm-mail forwards the company's "
                                                 "outbound mail to, after recording it; empty: no relaying")
    mail_source_name: str = Field("", description="names crm-mail in its events' source (urn:crm:mail:<name>); "
                                                  "keep it stable so a re-delivered message stays one event; "
                                                  "empty: the host name")
    collector_url: str = Field("http://127.0.0.1:8080", description="the collector crm-mail and the simulator "
                                                                    "post to (CRM_COLLECTOR_URL)")

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

    @field_validator("twilio_auth_token", "shopify_webhook_secret", "woocommerce_webhook_secret")
    @classmethod
    def _unset_when_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # docker-compose passes an unset variable as "": that adapter is not configured
        return value if value is not None and value.get_secret_value().strip() else None

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

    @model_validator(mode="after")
    def _pg_connection(self) -> "Settings":
        # security: Kafka and PostgreSQL transport. pg_dsn becomes the DSN every connection uses: the
        # pg_ssl* settings merged in, the password kept apart from the string (services.common.db.Dsn).
        # Nothing here may raise: pydantic would print the raw input, secrets included. The Kafka
        # settings are checked where the clients are made (services.common.kafka_security).
        from services.common.db import settings_dsn

        self.pg_dsn = settings_dsn(self)
        return self


def names(value: str) -> list[str]:
    """The entries of a comma-separated setting, stripped and lower-cased, empty ones left out."""
    return [part.strip().lower() for part in value.split(",") if part.strip()]


def uvicorn_proxy(settings: Settings) -> dict:
    """uvicorn's arguments for forwarded headers: believed only from ``CRM_TRUSTED_PROXIES``
    (uvicorn's own default, 127.0.0.1, would let any local process name any client address)."""
    trusted = names(settings.trusted_proxies)
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def load() -> Settings:
    """Read the settings from the environment."""
    return Settings()
