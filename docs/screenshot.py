"""The README's picture of the dashboard, taken from a running demo (``make demo``):

    .venv/bin/python docs/screenshot.py [--url http://127.0.0.1:8000] [--tab satisfaction] [--lang en-US]

Signs in as the demo operator (password from ``$CRM_HOME/keys/dashboard.password``), waits for the
live figures and charts, and writes ``docs/dashboard.png`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser import chromium, sign_in  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('CRM_API_PORT', '8000')}")
    parser.add_argument("--user", default="demo")
    parser.add_argument("--password-file", default=str(Path(os.environ.get("CRM_HOME", REPO / ".crm"))
                                                       / "keys" / "dashboard.password"))
    parser.add_argument("--tab", default="satisfaction", choices=("satisfaction", "pipeline", "customers"))
    parser.add_argument("--lang", default="en-US")
    parser.add_argument("--query", default="window=24h&hours=24", help="the page's URL parameters")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds for the live figures to arrive")
    parser.add_argument("--out", default=str(REPO / "docs" / "dashboard.png"))
    args = parser.parse_args()
    password = Path(args.password_file).read_text().strip()
    driver = chromium(1440, 1000, args.lang)
    try:
        sign_in(driver, args.url, args.user, password, query=f"{args.query}&tab={args.tab}")
        time.sleep(args.wait)
        driver.save_screenshot(args.out)
    finally:
        driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
