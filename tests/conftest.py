"""Shared fixtures. Integration and end-to-end tests get the real stack started by the session."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests import http
from tests.processes import REPO, Platform, Stack

TEST_HOME = Path(os.environ.get("CRM_TEST_HOME") or REPO / ".crm" / "test")
"""The test stack's folder; with CRM_TEST_HOME and the CRM_TEST_*_PORT variables two test sessions can run at once."""


def pytest_configure(config):
    config.addinivalue_line("markers", "chaos: the chaos run (all faults at once); runs last in the session")
    config.addinivalue_line("markers", "forges_log: writes records on the shared log whose outcome depends on arrival "
                                       "order (resolved events no touchpoint explains, one event id with two "
                                       "contents); runs after the replay tests, which compare rebuilds with live")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts:
            item.add_marker(pytest.mark.integration)
        elif "e2e" in path.parts:
            item.add_marker(pytest.mark.e2e)
    # The fault tests restart the shared broker and database: they run after everything else, the
    # chaos run last of all (sort is stable, so the order within each group stays as collected).
    # Every test reads the whole shared log; tests forging records whose outcome depends on arrival
    # order run after the replay tests, whose rebuilds would rightly differ from live on them.
    items.sort(key=lambda item: ("chaos" in item.keywords, Path(str(item.fspath)).name == "test_faults.py",
                                 "forges_log" in item.keywords))


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
