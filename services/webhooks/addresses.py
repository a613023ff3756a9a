"""Which addresses a webhook may reach: public ones only (no SSRF into the platform's own network).

A subscription's URL could otherwise make the dispatcher POST to the query API on loopback, to
PostgreSQL, to a cloud's metadata service or to any host of the internal network, and the
delivery log would tell which ports answer. So a URL is checked when a subscription is made or
changed, and again before every attempt, on the addresses its host resolves to *then*: the
attempt connects to the very address that was checked (the host name still goes in ``Host`` and
in TLS's SNI and certificate check), so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot slip through; redirects are never followed.

Refused: loopback, private (RFC 1918), carrier-grade NAT, link-local (the metadata services live
there), unique-local and site-local IPv6, multicast, unspecified and reserved addresses, and
IPv4-mapped or NAT64 forms of them: everything that is not globally routable. Host names listed in
``CRM_WEBHOOKS_ALLOWED_HOSTS`` are exempt (the demo and the tests deliver to receivers on
127.0.0.1).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """A webhook URL whose host is, or resolves to, an address webhooks may not reach."""


def refusal(address: str) -> str | None:
    """Why webhooks may not reach this IP address (None: a public address they may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is no part of the address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for test, name in ((ip.is_loopback, "loopback"), (ip.is_link_local, "link-local (metadata services)"),
                       (ip.is_unspecified, "unspecified"), (ip.is_multicast, "multicast"),
                       (ip.is_private, "private or unique-local"), (ip.is_reserved, "reserved"),
                       (getattr(ip, "is_site_local", False), "site-local")):
        if test:
            return name
    return None if ip.is_global else "not globally routable"


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def allowed_host(url: str, allowed: Iterable[str]) -> bool:
    """Whether the URL's host is one the settings exempt (``CRM_WEBHOOKS_ALLOWED_HOSTS``)."""
    return host_of(url) in set(allowed)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def check_addresses(host: str, addresses: Iterable[str]) -> str:
    """The first of the host's addresses, or ``AddressRefused`` when any is not public (a host
    with one private address among public ones could be steered to it)."""
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        raise AddressRefused(f"{host} has no address")
    for address in addresses:
        why = refusal(address)
        if why is not None:
            shown = host if _literal(host) else f"{host} ({address})"
            raise AddressRefused(f"webhooks may reach public addresses only: {shown} is {why}")
    return addresses[0]


def _port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_url(url: str, allowed: Iterable[str]) -> None:
    """At creation: refuse a URL whose host is, or now resolves to, a forbidden address. A host
    that does not resolve (yet) is let through: every attempt resolves and checks again."""
    host = host_of(url)
    if host in set(allowed):
        return
    literal = _literal(host)
    if literal is not None:
        check_addresses(host, [literal])
        return
    try:
        infos = socket.getaddrinfo(host, _port(url), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # no such name (yet), or not a name a resolver takes
        return
    check_addresses(host, [info[4][0] for info in infos])


async def resolve(url: str) -> str:
    """Before an attempt: the address to connect to (checked), or ``AddressRefused``."""
    host = host_of(url)
    literal = _literal(host)
    if literal is not None:
        return check_addresses(host, [literal])
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, _port(url), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise ConnectionError(f"cannot resolve {host}: {exc}") from None
    return check_addresses(host, [info[4][0] for info in infos])
