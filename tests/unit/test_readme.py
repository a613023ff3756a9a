"""The README's examples do what it says: every event it posts is valid (as the collector would
read it, in the mode its Content-Type names), the quick start sends the customer it then looks up,
and its commands and figures match the code."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path



from events import http_binding
from events.envelope import validate
from services.common.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NOW = datetime(2026, 11, 22, tzinfo=timezone.utc)
POST = re.compile(r"curl [^\n]*?/v1/events((?:[^\n]*\\\n)*[^\n]*?)-d '(.*?)'", re.S)


def posts() -> list[tuple[int, dict[str, str], bytes]]:
    """(position in the README, headers, body) of every curl POST /v1/events example."""
    out = []
    for m in POST.finditer(README):
        headers = dict((k.lower(), v.strip()) for k, v in re.findall(r"-H '([^:']+):\s*([^']*)'", m.group(0))
                       if k.lower() != "authorization")
        out.append((m.start(), headers, m.group(2).encode()))
    return out


def test_every_event_the_readme_posts_is_accepted():
    found = posts()
    assert len(found) >= 3  # the quick start, and the plain and binary examples of Sending events
    for _, headers, body in found:
        request = http_binding.read(headers, body)
        for event in request.items:
            validate(event, received_at=NOW, require_specversion=request.cloudevents)  # raises on a refusal


def test_the_quick_start_sends_the_customer_before_it_looks_them_up():
    lookup = README.index("/v1/customers?phone=13912345678")
    sent = [(at, headers, body) for at, headers, body in posts() if at < lookup]
    assert sent, "the first lookup comes before any event is sent"
    events = [e for _, headers, body in sent for e in http_binding.read(headers, body).items]
    phones = {i.value for e in events for i in validate(e, received_at=NOW).identifiers if i.kind == "phone"}
    assert "+8613912345678" in phones


def test_commands_and_figures_match_the_code():
    # the examples run from the project's virtualenv (a system python has no kafka module)
    assert not re.search(r"(?<![/\w])python examples/", README)
    default_region = Settings.model_fields["default_region"].default
    assert set(re.findall(r"default region ([A-Z]{2})", README)) <= {default_region}
    # names in the read model are sealed: a psql tip must not promise them
    assert not [c for c in re.findall(r'psql -c "([^"]*)"', README) if "display_name" in c]
    assert "not yet behind credentials" not in README
