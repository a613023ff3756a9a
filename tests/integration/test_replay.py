"""`crm replay` on the real broker and database: projections rebuilt from the log (and from the
archive of accepted events) beside the live ones while events flow, swapped in atomically, equal
to the live ones, and the live workers carry on on the rebuilt tables."""
from __future__ import annotations

import json
import subprocess
import threading

import psycopg2
import pytest

from events.envelope import event_key
from services.replay import IDENTITY_TABLES, KEPT_TABLES, VIEW_TABLES
from tests.feed import assert_feed_matches_state
from tests.integration.test_exactly_once import (applied, assert_equals_reference, assert_indicators_equal_reference,
                                                 journeys)
from tests.integration.test_processors import publish
from tests.processes import VENV_BIN, wait_for
from tests.reference import reference_views


def replay(platform, *args: str) -> dict:
    done = subprocess.run([str(VENV_BIN / "crm"), "replay", "--json", *args], env=platform.owner_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 2), f"crm replay exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def scalar(dsn: str, sql: str, *args):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def test_every_table_is_either_a_projection_or_kept(stack):
    dsn = stack.new_database()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = {r[0] for r in cur.fetchall()}
    classified = set(IDENTITY_TABLES) | set(VIEW_TABLES) | set(KEPT_TABLES)
    assert tables - classified == set(), "new tables must be classified in services/replay.py"
    assert classified - tables == set(), "services/replay.py names tables that do not exist"


def test_rebuilds_swap_in_while_events_flow_and_equal_the_live_projections(platform, unique):
    events = journeys(unique, 160)
    first, second, third = events[: len(events) // 2], events[len(events) // 2: -200], events[-200:]
    keys = lambda evs: sorted({event_key(e["source"], e["id"]) for e in evs})  # noqa: E731
    platform.processor(CRM_BATCH_SIZE="200", CRM_STATE_TICK_S="1")
    publish(platform, first)
    wait_for(lambda: applied(platform.dsn, keys(first)) == len(keys(first)), 180, "the first half applied")

    # the view scope is rebuilt from crm.customer-events while the second part streams in
    sender = threading.Thread(target=publish, args=(platform, second))
    sender.start()
    report = replay(platform, "--scope", "view", "--require-equal")
    sender.join()
    assert report["swapped"], report
    assert report["differences"] == 0 and report["records"] > len(first), report
    assert all(t["live_only"] == t["rebuilt_only"] == 0 for t in report["tables"].values() if t["compared"])
    assert report["state"]["changed"] == report["state"]["gone"] == 0, "the rebuild published changes"
    assert scalar(platform.dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", report["retired"]) == 1

    # every accepted event is archived, once, with its position
    assert scalar(platform.dsn, "SELECT count(*) FROM event_archive WHERE event_key = ANY(%s)",
                  keys(first + second)) == len(keys(first + second))

    # all projections rebuilt from the archive, identity graph included
    report = replay(platform, "--scope", "all", "--source", "archive", "--require-equal")
    assert report["swapped"] and report["differences"] == 0, report
    assert report["view_lag"] == 0, report
    assert report["tables"]["identity_identifier"]["rows"] > 0

    # the live workers go on, on the rebuilt tables, from exactly where the replaced ones ended
    publish(platform, third)
    assert_equals_reference(platform.dsn, events)
    assert_indicators_equal_reference(platform)
    counts = assert_feed_matches_state(platform, set(reference_views(events)))
    assert counts["changes"] > counts["customers"]

    listed = subprocess.run([str(VENV_BIN / "crm"), "replay", "--list"], env=platform.owner_env(), capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and "all from archive" in listed.stdout and "0 rows differ" in listed.stdout


def test_an_interrupted_rebuild_resumes_and_a_wrong_one_is_refused(platform, unique):
    events = journeys(unique, 40)
    platform.processor(CRM_BATCH_SIZE="100", CRM_STATE_TICK_S="1")
    publish(platform, events)
    k = sorted({event_key(e["source"], e["id"]) for e in events})
    wait_for(lambda: applied(platform.dsn, k) == len(k), 180, "the events applied")

    kept = replay(platform, "--scope", "identity", "--no-swap")
    assert not kept["swapped"] and kept["differences"] == 0, kept
    built = kept["records"]
    # a different scope cannot take over the unfinished rebuild's schema
    done = subprocess.run([str(VENV_BIN / "crm"), "replay", "--scope", "view"], env=platform.owner_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "unfinished rebuild" in done.stderr
    resumed = replay(platform, "--scope", "identity", "--require-equal")
    assert resumed["swapped"] and resumed["differences"] == 0, resumed
    assert resumed["records"] < built, "the second run should resume, not start over"
    assert_equals_reference(platform.dsn, events)


@pytest.mark.parametrize("args,message", [(("--scope", "view", "--source", "archive"), "archive holds accepted"),
                                          (("--scope", "nonsense"), "invalid choice")])
def test_bad_requests_are_refused_with_a_reason(platform, args, message):
    done = subprocess.run([str(VENV_BIN / "crm"), "replay", *args], env=platform.owner_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr
