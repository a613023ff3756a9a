"""End-to-end fixtures: the collector, a processor and the query API as real processes."""
from __future__ import annotations

import pytest


@pytest.fixture
def running(platform) -> tuple[str, str]:
    """(collector URL, query API URL) of a running platform on a fresh database."""
    _, collector = platform.collector()
    platform.processor()
    _, api = platform.api()
    return collector, api
