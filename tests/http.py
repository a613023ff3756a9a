"""HTTP for the tests: httpx, with the current platform's admin API key sent by default.

The ``platform`` fixture sets the key (``use_key``); tests call ``http.get(...)``,
``http.post(...)``, ``http.Client(...)`` as they would call httpx. ``key=None`` sends no key and
``key="crm_sk_..."`` another one; an ``Authorization`` or ``X-API-Key`` header given explicitly
is left alone.
"""
from __future__ import annotations

from typing import Any

import httpx

_CURRENT = object()
_key: str | None = None


def use_key(key: str | None) -> None:
    """The key sent from now on when a call names none (None: no key)."""
    global _key
    _key = key


def current_key() -> str | None:
    return _key


def auth(key: str | None) -> dict[str, str]:
    """The header that presents ``key`` (none for None)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _headers(headers: Any, key: Any) -> httpx.Headers:
    merged = httpx.Headers(headers or {})
    chosen = _key if key is _CURRENT else key
    if chosen and "authorization" not in merged and "x-api-key" not in merged:
        merged["Authorization"] = f"Bearer {chosen}"
    return merged


def request(method: str, url: Any, *, key: Any = _CURRENT, headers: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, headers=_headers(headers, key), **kwargs)


def get(url: Any, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: Any, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def put(url: Any, **kwargs: Any) -> httpx.Response:
    return request("PUT", url, **kwargs)


def patch(url: Any, **kwargs: Any) -> httpx.Response:
    return request("PATCH", url, **kwargs)


def delete(url: Any, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)


def options(url: Any, **kwargs: Any) -> httpx.Response:
    return request("OPTIONS", url, **kwargs)


def stream(method: str, url: Any, *, key: Any = _CURRENT, headers: Any = None, **kwargs: Any):
    """``httpx.stream`` (a context manager) with the key."""
    return httpx.stream(method, url, headers=_headers(headers, key), **kwargs)


class Client(httpx.Client):
    def __init__(self, *args: Any, key: Any = _CURRENT, headers: Any = None, **kwargs: Any):
        super().__init__(*args, headers=_headers(headers, key), **kwargs)


class AsyncClient(httpx.AsyncClient):
    def __init__(self, *args: Any, key: Any = _CURRENT, headers: Any = None, **kwargs: Any):
        super().__init__(*args, headers=_headers(headers, key), **kwargs)
