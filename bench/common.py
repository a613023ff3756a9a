"""What every benchmark shares: the stack it runs on, figures, percentiles, pacing, progress and the
result record that ``bench.run`` collects into ``bench/results.json`` and ``docs/benchmarks.md``.

Every figure is measured next to a **baseline** in the same run on the same machine (a bare
kafka-python producer, a bare aiokafka consumer, a bare psycopg2 select ...), so the ratio
figure/baseline carries over between machines where absolute numbers do not.
"""
from __future__ import annotations

import os
import platform as platform_module
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tests.processes import REPO, Platform, Stack

BENCH_HOME = Path(os.environ.get("CRM_BENCH_HOME") or REPO / ".crm" / "bench")
console = Console()


# -- figures ------------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values), "min": min(values), "mean": statistics.fmean(values)}


def progress_bar(**fields: Any) -> Progress:
    """The progress display every long step shows: description, bar, count, a stats field, time."""
    columns = (TextColumn("{task.description:<28}"), BarColumn(bar_width=20), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
    return Progress(*columns, console=console, **fields)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children now (0 when it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for one in procs:
        try:
            total += one.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakRss:
    """Samples the resident set of a process and its children every ``every`` s; ``peak`` in MiB."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every = pid, every
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-rss")

    def sample(self) -> int:
        total = rss_bytes(self.pid)
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self) -> "PeakRss":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    @property
    def peak_mib(self) -> float:
        return round(self.peak_bytes / 2**20, 1)


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used, with its children alive and reaped (a
    PostgreSQL postmaster's backends that have exited count through its children's times)."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def stack_pids(stack: Stack) -> dict[str, int]:
    """The PostgreSQL postmaster and the Kafka broker of a stack (those whose pid files say so)."""
    pids = {}
    for name, path in (("postgresql", stack.home / "postgres" / "data" / "postmaster.pid"),
                       ("kafka", stack.home / "run" / "kafka.pid")):
        try:
            pids[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return pids


class CpuAccount:
    """Where the machine's CPU went between ``start()`` and ``stop()``: seconds per named process
    tree (a worker, PostgreSQL, Kafka), the rest of the machine, and idle."""

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids
        self._first: dict[str, float] | None = None
        self.seconds: dict[str, float] = {}

    def _snapshot(self) -> dict[str, float]:
        snap = {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        machine = psutil.cpu_times()
        snap["_busy"] = (machine.user + machine.nice + machine.system + getattr(machine, "irq", 0.0)
                         + getattr(machine, "softirq", 0.0))
        snap["_idle"] = machine.idle + getattr(machine, "iowait", 0.0)
        snap["_wall"] = time.monotonic()
        return snap

    def start(self) -> None:
        self._first = self._snapshot()

    def stop(self) -> dict[str, float]:
        if self._first is None:
            return {}
        last = self._snapshot()
        spent = {name: last[name] - self._first[name] for name in self.pids}
        busy = last["_busy"] - self._first["_busy"]
        self.seconds = {**spent, "rest of the machine": max(busy - sum(spent.values()), 0.0),
                        "idle": last["_idle"] - self._first["_idle"], "wall": last["_wall"] - self._first["_wall"]}
        return self.seconds

    def per_event_ms(self, events: int) -> dict[str, float]:
        """CPU milliseconds per event of each part (and idle), from ``stop()``'s figures."""
        return {name: round(1000 * s / events, 4) for name, s in self.seconds.items() if name != "wall"} if events else {}


@dataclass
class Result:
    """One line of the results table: a figure, its same-run baseline and the target."""

    key: str                 # stable identifier, e.g. "processing.rate"
    what: str                # what was measured, in words
    figure: float
    unit: str
    baseline: float | None   # same unit as figure (None: the benchmark has no baseline of its own)
    baseline_what: str
    target: str              # the target in words, e.g. ">= 20,000 events/s and >= 25 % of baseline"
    met: bool | None         # None: no target for this line (informational)
    ratio: float | None = None  # figure / baseline unless the benchmark says otherwise
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline:
            self.ratio = self.figure / self.baseline

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What a benchmark module's ``run(ctx) -> list[Result]`` gets from ``bench.run``.

    ``platform`` starts services on the bench stack (``platform.collector()``, ``.api()``,
    ``.processor()``, each returning once healthy); a module stops what it started when it no
    longer needs it (``service.stop()``), so the next benchmark has the machine to itself.
    ``platform.keys[scope]`` are API keys of the run's database; ``tests.http.Client`` sends the
    admin key. ``events`` is the size of the processing log (1,000,000; 20,000 with --quick); by
    the time the query benchmarks run, that log has been processed into ``platform.dsn``.
    """

    stack: Stack
    platform: Platform
    quick: bool
    events: int
    run_id: str
    shared: dict[str, Any] = field(default_factory=dict)  # figures one benchmark leaves for another


# -- the machine --------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass

    def version(*argv: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:
            return "unknown"

    import kafka
    import faust

    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib,
            "os": f"{platform_module.system()} {platform_module.release()}",
            "python": platform_module.python_version(), "java": version("java", "-version"),
            "postgresql": version("pg_config", "--version"),
            "kafka_python": kafka.__version__, "faust": faust.__version__,
            "load_avg_at_start": os.getloadavg()}


# -- the stack ----------------------------------------------------------------------------------
def bench_stack() -> Stack:
    """The project's Kafka and PostgreSQL on the benchmark's ports under .crm/bench."""
    return Stack.on_ports(BENCH_HOME, os.environ.get("CRM_BENCH_KAFKA_PORT", "29092"),
                          os.environ.get("CRM_BENCH_KAFKA_CONTROLLER_PORT", "29093"),
                          os.environ.get("CRM_BENCH_PG_PORT", "25432"))


def _running(stack: Stack) -> bool:
    return (stack.script("kafka.sh", "status", check=False).returncode == 0
            and stack.script("postgres.sh", "status", check=False).returncode == 0)


def start_stack(stack: Stack, *, reuse: bool = True) -> bool:
    """Starts PostgreSQL and a broker with an empty log, or keeps a bench stack that is already
    running (``CRM_BENCH_KEEP_STACK=1`` of an earlier run): its platform topics are then deleted and
    made again, so every run starts from an empty log. Returns True when it was already running."""
    if reuse and _running(stack):
        with console.status("bench stack already running: emptying its topics ..."):
            empty_topics(stack.kafka_bootstrap)
        console.log(f"using the running bench stack: Kafka {stack.kafka_bootstrap}, "
                    f"PostgreSQL 127.0.0.1:{stack.env['CRM_PG_PORT']}")
        return True
    with console.status("starting PostgreSQL and Kafka under .crm/bench ..."):
        stack.fresh_start()
    console.log(f"PostgreSQL 127.0.0.1:{stack.env['CRM_PG_PORT']}, Kafka {stack.kafka_bootstrap}, data {BENCH_HOME}")
    return False


def empty_topics(bootstrap: str, keep: tuple[str, ...] = ()) -> None:
    """Deletes every topic of the platform and of earlier benchmark runs but ``keep`` (they are made
    again by ``ensure_topics``)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="crm-bench-admin")
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(("crm.", "bench.", "crm-")) and t not in keep]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=60_000)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and set(doomed) & set(admin.list_topics()):
                time.sleep(0.5)
    finally:
        admin.close()


def ensure_topics(stack: Stack) -> None:
    from services.common.kafka_admin import ensure_topics as ensure

    ensure(stack.kafka_bootstrap, int(stack.env.get("CRM_PARTITIONS", "4")))


def stop_stack(stack: Stack, platforms: list[Platform], keep: bool) -> None:
    """Stops the services; then, unless ``keep``, drops the run's databases and stops Kafka and PostgreSQL."""
    with console.status("stopping the services" + ("" if keep else ", Kafka and PostgreSQL") + " ..."):
        for platform in platforms:
            platform.stop_all()
        for platform in platforms:
            drop_database(stack, platform.dsn)
        if keep:
            console.log(f"CRM_BENCH_KEEP_STACK=1: Kafka {stack.kafka_bootstrap} and PostgreSQL keep running")
            return
        stack.script("kafka.sh", "stop", check=False)
        stack.script("postgres.sh", "stop", check=False)
    console.log("stopped the services, Kafka and PostgreSQL")


def drop_database(stack: Stack, dsn: str) -> None:
    conn = psycopg2.connect(stack.pg_admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {dsn.rsplit('/', 1)[1]} WITH (FORCE)")
    conn.close()
