"""Replay: every projection rebuilt from the log (``crm replay --scope all``), as an operator runs
it after changing a projection, beside the live tables and swapped in at the end.

Runs after ``bench.processing``: the log is the one loaded there and the live tables are what the
one-worker run made of it (no worker is running: the rebuild's catch-up has nothing to wait for).
Rate = records rebuilt / wall time of the command, start-up and the comparison with the live tables
included. The baseline is the bare aiokafka consume-and-decode loop over the same log, measured by
``bench.processing`` in the same run.
"""
from __future__ import annotations

import subprocess
import time

import orjson

from bench.common import Context, Result, console
from tests.processes import VENV_BIN

TARGET_RATE = 50_000


def run(ctx: Context) -> list[Result]:
    platform = ctx.platform
    env = platform.env(CRM_LOG_JSON="false")
    argv = [str(VENV_BIN / "crm"), "replay", "--scope", "all", "--source", "kafka", "--consumer",
            platform.processor_id, "--json"]
    console.log("crm replay --scope all --source kafka (progress below is the command's own)")
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = ""
    for line in proc.stdout:  # the command's progress lines, then its JSON report
        if line.startswith("{"):
            last = line
        elif line.strip():
            console.print(f"  {line.rstrip()}", highlight=False)
    code = proc.wait(timeout=7200)
    seconds = time.monotonic() - started
    if code != 0 or not last:
        raise RuntimeError(f"crm replay exited {code}: {proc.stderr.read()[-2000:]}")
    report = orjson.loads(last)
    records = int(report.get("records") or 0)
    rate = records / seconds
    bare = ctx.shared.get("bare_rate")
    console.log(f"replay: {records:,} records in {seconds:.1f} s = {rate:,.0f} records/s")
    return [Result("replay.all", f"replay of every projection from the log ({records:,} records, "
                   "crm replay --scope all)", rate, "events/s", bare, "bare aiokafka consume-and-decode loop",
                   f">= {TARGET_RATE:,} events/s", rate >= TARGET_RATE,
                   details={"seconds": round(seconds, 1), "report": report})]
