"""Shared fixtures. Integration and end-to-end tests get the real stack started by the session."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from tests import http
from tests.processes import REPO, Platform, Stack

TEST_HOME = Path(os.environ.get("CRM_TEST_HOME") or REPO / ".crm" / "test")
"""The test stack's folder; with CRM_TEST_HOME and the CRM_TEST_*_PORT variables two test sessions can run at once."""


# Reproducible fuzzing: in CI (CI=true) hypothesis draws the same examples every run; elsewhere it
# explores, and a failure prints the blob that replays it (@reproduce_failure). A failure found once
# is kept as an explicit @example. pytest-randomly prints the seed of the shuffled order at the top
# (-p randomly -p "randomly_seed=N" replays it; -p no:randomly runs in file order).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: the chaos run (all faults at once)")


def pytest_collection_modifyitems(config, items):
    # No test depends on another's order: each owns its database, consumer groups and topics
    # (tests/processes.Platform), and the suite runs shuffled (pytest-randomly).
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The project's own Kafka broker and PostgreSQL on test ports, fresh for the session."""
    st = Stack.on_ports(TEST_HOME, os.environ.get("CRM_TEST_KAFKA_PORT", "19092"),
                        os.environ.get("CRM_TEST_KAFKA_CONTROLLER_PORT", "19093"),
                        os.environ.get("CRM_TEST_PG_PORT", "15432"))
    st.fresh_start()  # a fresh log each session
    yield st
    if os.environ.get("CRM_TEST_KEEP_STACK") != "1":
        st.script("kafka.sh", "stop", check=False)
        st.script("postgres.sh", "stop", check=False)


@pytest.fixture
def platform(stack: Stack, request) -> Platform:
    """A fresh database and consumer group, and a way to start services against them."""
    log_dir = TEST_HOME / "logs" / request.node.name[:60]
    plat = Platform(stack, stack.new_database(), log_dir)
    http.use_key(plat.admin_key)  # tests/http.py sends it unless told otherwise
    yield plat
    http.use_key(None)
    plat.stop_all()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]
