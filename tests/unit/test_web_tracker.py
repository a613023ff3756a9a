"""The web adapter's pure parts: the script as served, ETags, and the bodies the tracker sends."""
from __future__ import annotations

import gzip

import pytest

from services.ingest.adapters import web


def test_the_served_script_carries_the_cookie_lifetime():
    source = web.SCRIPT_FILE.read_text(encoding="utf-8")
    served = web.render_script(source, 30).decode()
    assert "const COOKIE_DAYS = 30;" in served and "const COOKIE_DAYS = 365;" not in served
    assert served.replace("const COOKIE_DAYS = 30;", "const COOKIE_DAYS = 365;") == source
    with pytest.raises(RuntimeError, match="COOKIE_DAYS"):
        web.render_script("(function () {})();", 30)


def test_the_script_stays_small_and_needs_no_build():
    source = web.SCRIPT_FILE.read_bytes()
    assert len(source) < 10 * 1024  # unminified
    assert len(gzip.compress(source, 9)) < 4 * 1024  # as served to browsers that take gzip
    text = source.decode()
    assert text.lstrip().startswith("/*!") and "(function (w, d) {" in text and "import " not in text
    # a beacon's body type that needs no preflight, and the key in the URL (beacons set no headers)
    assert "sendBeacon(endpoint" in text and '"/v1/tracker/events?key="' in text


@pytest.mark.parametrize("header, matches", [
    (None, False), ("", False), ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True),
    ('"abcd"', False), ("abc", False),
])
def test_if_none_match(header, matches):
    assert web.etag_matches(header, '"abc"') is matches


def test_the_etag_follows_the_content():
    assert web.etag_of(b"a") == web.etag_of(b"a") != web.etag_of(b"b")
    assert web.etag_of(b"a").startswith('"') and web.etag_of(b"a").endswith('"')


@pytest.mark.parametrize("body, items, single", [
    (b'{"batch": [{"id": "1"}, {"id": "2"}]}', [{"id": "1"}, {"id": "2"}], False),
    (b'[{"id": "1"}]', [{"id": "1"}], False),
    (b'{"id": "1", "type": "web.page_viewed"}', [{"id": "1", "type": "web.page_viewed"}], True),
    (b'{"batch": []}', [], False),
])
def test_batches(body, items, single):
    assert web.parse_batch(body) == (items, single)


@pytest.mark.parametrize("body, message", [
    (b"", "empty"), (b"  \n", "empty"), (b"{nope", "malformed JSON"), (b'{"batch": {"id": 1}}', "must be an array"),
    (b'"text"', "must be"), (b"42", "must be"),
])
def test_bad_batches_say_what_is_wrong(body, message):
    with pytest.raises(web.BadBatch, match=message):
        web.parse_batch(body)


def test_the_routes_it_opens_are_the_ones_it_authenticates_itself():
    assert web.OPEN_ROUTES == {"GET /v1/tracker.js", "POST /v1/tracker/events", "OPTIONS /v1/tracker/events"}
