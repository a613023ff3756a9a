"""The SMTP side of ``crm-mail``: an aiosmtpd handler that turns each accepted message into its
CloudEvent and answers only when the platform has made it durable.

Replies (RFC 3463 enhanced codes), and what the sending server does with them:

* ``250 2.0.0`` the collector acknowledged the event (HTTP 202: it is in the log);
* ``451 4.3.0`` the collector or Kafka is unavailable: nothing was recorded, the sender retries;
* ``550 5.6.0`` the message cannot become an event (no From, no recipient, ...) or the platform
  rejected the event; the reason is in the reply and the sender bounces the message;
* ``550 5.7.1`` at RCPT: a recipient outside the company's domains (this is not an open relay);
* ``552`` (aiosmtpd) the message is larger than ``mail_max_bytes`` (advertised with SIZE).

A re-delivered message maps to the same event id, so a retry after a lost reply is one event.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import smtplib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram

from services.mail.parse import Mailbox, Unmappable, to_events

log = logging.getLogger(__name__)

MESSAGES = Counter("crm_mail_messages_total", "messages by outcome (accepted, refused, deferred) and reason",
                   ["outcome", "reason"])
RECIPIENTS_REFUSED = Counter("crm_mail_recipients_refused_total", "RCPT TO refused (not the company's)")
DATA_SECONDS = Histogram("crm_mail_data_seconds", "from the end of DATA to the reply",
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
IN_FLIGHT = Gauge("crm_mail_in_flight", "messages between DATA and the reply")

MAX_REPLY = 400  # an SMTP reply line is at most 512 octets


def smtp_text(text: str) -> str:
    """``text`` fit for one SMTP reply line: ASCII (others escaped), no line breaks, bounded."""
    one_line = " ".join(str(text).split())
    ascii_text = one_line.encode("ascii", "backslashreplace").decode("ascii")
    return ascii_text if len(ascii_text) <= MAX_REPLY else ascii_text[:MAX_REPLY - 3] + "..."


def rejection_reasons(rejected: Iterable[dict[str, Any]]) -> str:
    """The collector's rejections in one line (``schema_violation: data.to: ...``)."""
    parts = []
    for r in rejected:
        errors = "; ".join(f"{e.get('field') or '(event)'}: {e.get('message')}" for e in r.get("errors") or [])
        parts.append(f"{r.get('reason')}: {errors}" if errors else str(r.get("reason")))
    return " | ".join(parts)


@dataclass
class Delivered:
    """What the collector said about the events of one message (the SDK's ``SendResult`` fits)."""

    accepted: list[str]
    rejected: list[dict[str, Any]]
    failed: int = 0
    error: str | None = None
    status: int | None = None


Deliver = Callable[[list[dict[str, Any]]], Awaitable[Any]]


class RelayError(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass(frozen=True)
class Relay:
    """The smarthost the company's outbound mail is forwarded to once recorded (``host[:port]``)."""

    host: str
    port: int = 25
    timeout: float = 30.0

    @classmethod
    def parse(cls, value: str) -> "Relay | None":
        value = value.strip()
        if not value:
            return None
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        return cls(host or value, int(port) if port else 25)

    def _send(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo_or_helo_if_needed()
                if smtp.has_extn("starttls"):
                    smtp.starttls()
                    smtp.ehlo()
                smtp.sendmail(mail_from, rcpt_tos, content)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise RelayError(code, text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)) from None
        except smtplib.SMTPResponseException as exc:
            raise RelayError(exc.smtp_code, exc.smtp_error.decode("utf-8", "replace")
                             if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise RelayError(451, f"{type(exc).__name__}: {exc}") from None

    async def forward(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> None:
        await asyncio.to_thread(self._send, mail_from, rcpt_tos, content)


def _trusted_peer(peer: Any) -> bool:
    """Only clients on this host or a private network may relay (the company's own mail server)."""
    try:
        address = ipaddress.ip_address(peer[0] if isinstance(peer, (tuple, list)) else str(peer))
    except (ValueError, IndexError, TypeError):
        return False
    return address.is_loopback or address.is_private


class MailHandler:
    """aiosmtpd handler: RCPT decides who we take mail for, DATA records the message."""

    def __init__(self, *, domains: Iterable[str], capture_address: str, source: str, deliver: Deliver,
                 max_event_bytes: int = 32 * 1024, relay: Relay | None = None, fax_senders: Iterable[str] = (),
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.domains = frozenset(d.strip().lower().lstrip("@") for d in domains if d.strip())
        self.capture = capture_address.strip().lower()
        self.source, self.deliver, self.max_event_bytes = source, deliver, max_event_bytes
        self.relay, self.clock = relay, clock
        self.fax_senders = tuple(a.strip().lower() for a in fax_senders if a.strip())
        self.in_flight = 0

    def _ours(self, address: str) -> bool:
        address = address.strip().strip("<>").lower()
        return address == self.capture or address.rpartition("@")[2] in self.domains

    def _relaying(self, session: Any, envelope: Any) -> bool:
        return (self.relay is not None and self._ours(envelope.mail_from or "") and _trusted_peer(session.peer))

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if self._ours(address) or self._relaying(session, envelope):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        RECIPIENTS_REFUSED.inc()
        MESSAGES.labels("refused", "recipient").inc()
        log.info("recipient refused", extra={"rcpt": address, "peer": str(session.peer)})
        return (f"550 5.7.1 <{smtp_text(address)}>: relaying denied; this server takes mail for "
                f"{smtp_text(', '.join(sorted(self.domains)))} only")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        started = time.monotonic()
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            return await self._data(envelope)
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
            DATA_SECONDS.observe(time.monotonic() - started)

    async def _data(self, envelope: Any) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        raw = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "surrogateescape")
        try:
            events = to_events(raw, domains=self.domains, source=self.source, now=self.clock(),
                               mailbox=Mailbox(envelope.mail_from, tuple(envelope.rcpt_tos), self.fax_senders),
                               max_event_bytes=self.max_event_bytes)
        except Unmappable as exc:
            MESSAGES.labels("refused", "unmappable").inc()
            log.info("message refused: not an event", extra={"reason": str(exc), "mail_from": envelope.mail_from})
            return f"550 5.6.0 cannot record this message: {smtp_text(str(exc))}"
        except Exception:  # a parser bug must not lose the mail: the sender keeps it and retries
            MESSAGES.labels("deferred", "parse_error").inc()
            log.exception("message could not be parsed", extra={"mail_from": envelope.mail_from})
            return "451 4.3.0 the message could not be processed; try again later"

        try:
            result = await self.deliver(events)
        except Exception as exc:
            result = Delivered([], [], failed=len(events), error=f"{type(exc).__name__}: {exc}")
        if result.rejected:
            reasons = rejection_reasons(result.rejected)
            MESSAGES.labels("refused", "rejected").inc()
            log.warning("message rejected by the platform", extra={"reason": reasons, "ids": [e["id"] for e in events]})
            return f"550 5.6.0 the CRM rejected the message: {smtp_text(reasons)}"
        accepted = set(result.accepted or ())
        if result.failed or result.error or not all(e["id"] in accepted for e in events):
            MESSAGES.labels("deferred", "collector_unavailable").inc()
            log.warning("collector unavailable; message deferred",
                        extra={"error": result.error, "status": result.status})
            return "451 4.3.0 the CRM is unavailable; try again later"

        relayed = ""
        if self._relaying_envelope(envelope):
            recipients = [r for r in envelope.rcpt_tos if r.strip().lower() != self.capture]
            try:
                await self.relay.forward(envelope.mail_from, recipients, raw)
            except RelayError as exc:
                transient = exc.code < 500
                MESSAGES.labels("deferred" if transient else "refused", "relay").inc()
                log.warning("relay failed", extra={"code": exc.code, "error": exc.text})
                if transient:
                    return f"451 4.4.1 recorded, but the smarthost is unavailable: {smtp_text(exc.text)}"
                return f"{exc.code} 5.0.0 the smarthost refused the message: {smtp_text(exc.text)}"
            relayed = ", relayed"
        for e in events:
            MESSAGES.labels("accepted", e["type"]).inc()
        log.info("message recorded", extra={"ids": [e["id"] for e in events], "type": events[0]["type"],
                                            "relayed": bool(relayed)})
        return f"250 2.0.0 OK: recorded as {events[0]['type']} {events[0]['id']}{relayed}"

    def _relaying_envelope(self, envelope: Any) -> bool:
        return self.relay is not None and any(not self._ours(r) for r in envelope.rcpt_tos)

    async def drain(self, timeout: float) -> bool:
        """Wait until no message is between DATA and its reply (a graceful stop); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight
