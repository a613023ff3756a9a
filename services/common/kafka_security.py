"""Kafka transport security: the ``CRM_KAFKA_SECURITY_PROTOCOL`` / ``CRM_KAFKA_SASL_*`` /
``CRM_KAFKA_SSL_*`` settings as each client library takes them (docs/transport-security.md).

Every Kafka client the platform makes gets its keyword arguments from one :class:`KafkaSecurity`:

* kafka-python (``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``): :meth:`KafkaSecurity.kafka_python`;
* aiokafka (``AIOKafkaConsumer``, ``AIOKafkaProducer``): :meth:`KafkaSecurity.aiokafka` (an ``ssl_context``);
* faust: :meth:`KafkaSecurity.faust` (the broker URL and ``broker_credentials``).

The password is a ``SecretStr`` until it is handed to a client: it shows as ``**********`` in any
repr, and no error raised here names it.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import SecretStr

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """How the platform's Kafka clients connect; :data:`PLAINTEXT` (the default) adds nothing."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"CRM_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
                             f"not {self.protocol!r}")
        if self.sasl:
            missing = [name for name, value in (("CRM_KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                                                ("CRM_KAFKA_SASL_USERNAME", self.sasl_username),
                                                ("CRM_KAFKA_SASL_PASSWORD", self.sasl_password)) if not value]
            if missing:
                raise ValueError(f"CRM_KAFKA_SECURITY_PROTOCOL={self.protocol} needs {', '.join(missing)}")
            if self.sasl_mechanism not in MECHANISMS:
                raise ValueError(f"CRM_KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                                 f"not {self.sasl_mechanism!r}")
        if self.tls and self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("CRM_KAFKA_SSL_KEYFILE is the key of a client certificate: set CRM_KAFKA_SSL_CERTFILE too")

    @classmethod
    def from_settings(cls, settings) -> "KafkaSecurity":
        """The ``kafka_*`` security settings of a :class:`~services.common.settings.Settings`
        (ValueError, naming the variables, when they do not fit together)."""
        return cls(protocol=settings.kafka_security_protocol, sasl_mechanism=settings.kafka_sasl_mechanism,
                   sasl_username=settings.kafka_sasl_username, sasl_password=settings.kafka_sasl_password,
                   ssl_cafile=settings.kafka_ssl_cafile, ssl_certfile=settings.kafka_ssl_certfile,
                   ssl_keyfile=settings.kafka_ssl_keyfile, ssl_key_password=settings.kafka_ssl_key_password,
                   ssl_check_hostname=settings.kafka_ssl_check_hostname)

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """For logs and messages: protocol, mechanism and user, never a secret."""
        if self.sasl:
            return f"{self.protocol} {self.sasl_mechanism} as {self.sasl_username}"
        return self.protocol

    @staticmethod
    def _secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    # -- kafka-python ---------------------------------------------------------------------------------
    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
                          ssl_password=self._secret(self.ssl_key_password), ssl_check_hostname=self.ssl_check_hostname)
        if self.sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self._secret(self.sasl_password))
        return kwargs

    # -- aiokafka -------------------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the aiokafka and faust clients (made once, shared); None without TLS.
        It checks the broker's certificate against ``ssl_cafile`` (else the system's CAs)."""
        return self._tls_context if self.tls else None

    @cached_property
    def _tls_context(self) -> ssl.SSLContext:
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
                                     password=self._secret(self.ssl_key_password))
        context.check_hostname = self.ssl_check_hostname
        return context

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's ``AIOKafkaConsumer`` and ``AIOKafkaProducer``."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self._secret(self.sasl_password))
        return kwargs

    # -- faust ----------------------------------------------------------------------------------------
    def faust_credentials(self):
        """faust's ``broker_credentials``: SASLCredentials (with the TLS context for SASL_SSL),
        SSLCredentials for SSL, None for PLAINTEXT."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.sasl_username, password=self._secret(self.sasl_password),
                                         mechanism=self.sasl_mechanism, ssl_context=self.ssl_context())
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def faust(self, bootstrap: str) -> dict[str, Any]:
        """faust ``App`` options: the broker URL (``kafka://`` whatever the protocol: faust's aiokafka
        transport takes TLS and SASL from the credentials) and ``broker_credentials``."""
        return {"broker": f"kafka://{bootstrap}", "broker_credentials": self.faust_credentials()}


PLAINTEXT = KafkaSecurity()
"""No TLS, no SASL: the default of every client taking a ``security`` argument."""


def from_settings(settings) -> KafkaSecurity:
    """:meth:`KafkaSecurity.from_settings`."""
    return KafkaSecurity.from_settings(settings)
