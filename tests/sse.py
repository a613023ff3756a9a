"""A Server-Sent Events client for tests and benchmarks: reads a stream in a thread and keeps what it got."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import httpx
import orjson

from tests import http


class SseReader:
    def __init__(self, url: str, params: dict[str, Any] | None = None):
        self.url, self.params = url, params or {}
        self.events: list[tuple[float, str, Any]] = []  # (monotonic time received, event, data)
        self.opened = threading.Event()
        self._stop = False
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SseReader":
        self._thread.start()
        if not self.opened.wait(30):
            raise AssertionError(f"the stream {self.url} did not open")
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True

    def _run(self) -> None:
        with http.stream("GET", self.url, params=self.params, timeout=httpx.Timeout(10, read=None)) as response:
            response.raise_for_status()
            event, data = "message", []
            for line in response.iter_lines():
                if self._stop:
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    with self._lock:
                        self.events.append((time.monotonic(), event, orjson.loads("\n".join(data))))
                        if event == "snapshot":
                            self.opened.set()
                        self._lock.notify_all()
                    event, data = "message", []

    def wait_for(self, predicate: Callable[[str, Any], bool], timeout: float, what: str) -> tuple[float, str, Any]:
        """The first event (received at, event, data) satisfying ``predicate``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lock:
            while True:
                for item in self.events[seen:]:
                    if predicate(item[1], item[2]):
                        return item
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting on the stream for {what}")
                self._lock.wait(left)
