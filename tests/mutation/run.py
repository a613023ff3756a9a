"""Apply each mutation of ``mutations.py`` to a temporary copy of the repository and run the unit
tests there; print a markdown table "mutation -> tests that failed"; exit non-zero when a mutation
survives, does not apply, or the unmutated copy fails its tests.

    python -m tests.mutation.run [--only SUBSTRING] [--keep] [--no-oracle]

Besides the files that failed under ``pytest -x tests/unit`` (the first failing file stops the run),
the table says whether tests/unit/test_oracle.py alone catches the mutation too: the independent
oracle, not only the fold's own unit tests, must see the fault.

The real tree is never modified: the repository is copied (without .venv, .crm, .git and caches)
and every run imports the copy (cwd and PYTHONPATH are the copy; the venv's editable install of the
real tree comes after both on the import path, which the first run checks).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutation.mutations import MUTATIONS, Mutation

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
SKIP = shutil.ignore_patterns(".venv", ".crm", ".git", "__pycache__", ".pytest_cache", ".hypothesis", "*.pyc")
PYTEST = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly"]
UNIT = "tests/unit"
ORACLE_TESTS = "tests/unit/test_oracle.py"
TIMEOUT_S = 900


def environment(copy: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports(copy: Path) -> str:
    """Where ``projections`` is imported from in the copy; must be inside it."""
    out = subprocess.run([str(PYTHON), "-c", "import projections, tests.oracle; print(projections.__file__)"],
                         cwd=copy, env=environment(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy at {copy} imports projections from {out}, not from the copy")
    return out


def apply(copy: Path, m: Mutation) -> None:
    path = copy / m.file
    text = path.read_text(encoding="utf-8")
    n = text.count(m.old)
    if n != 1:
        raise ValueError(f"{m.file}: the old text occurs {n} times (expected once): {m.old!r}")
    path.write_text(text.replace(m.old, m.new), encoding="utf-8")


def run_tests(copy: Path, target: str = UNIT) -> tuple[int, list[str], float]:
    """pytest's exit code and the test files that failed (or errored) in the copy."""
    started = time.monotonic()
    proc = subprocess.run([str(PYTHON), *PYTEST, target], cwd=copy, env=environment(copy), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    failed = sorted({m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (tests/[^:\s]+)", proc.stdout, re.M)})
    if proc.returncode not in (0, 1) and not failed:
        failed = [f"pytest exit {proc.returncode}: " + (proc.stdout.strip().splitlines() or ["?"])[-1]]
    return proc.returncode, failed, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutations whose description contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--no-oracle", action="store_true", help="skip the second run of test_oracle.py alone")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.description]
    root = Path(tempfile.mkdtemp(prefix="crm-mutation-"))
    try:
        base = root / "base"
        shutil.copytree(REPO, base, ignore=SKIP, symlinks=True)
        print(f"copy of {REPO} at {base}; projections imported from {check_imports(base)}", flush=True)
        code, failed, took = run_tests(base)
        if code != 0:
            print(f"the unmutated copy fails its unit tests ({', '.join(failed)}): fix that first", flush=True)
            return 2
        print(f"unmutated: tests/unit pass ({took:.0f} s)", flush=True)
        rows, bad = [], 0
        for i, m in enumerate(chosen, 1):
            copy = root / f"m{i:02d}"
            shutil.copytree(base, copy, symlinks=True)
            try:
                apply(copy, m)
            except ValueError as exc:
                rows.append((m, f"**ERROR: does not apply**: {exc}", ""))
                bad += 1
                print(f"[{i}/{len(chosen)}] {m.description}: does not apply", flush=True)
                continue
            code, failed, took = run_tests(copy)
            if code == 0 or not failed:
                rows.append((m, "**SURVIVED**", ""))
                bad += 1
            else:
                oracle = ""
                if not args.no_oracle:
                    oracle_code, _, more = run_tests(copy, ORACLE_TESTS)
                    took += more
                    oracle = "yes" if oracle_code == 1 else "**no**" if oracle_code == 0 else f"exit {oracle_code}"
                rows.append((m, ", ".join(f"`{f}`" for f in failed), oracle))
            print(f"[{i}/{len(chosen)}] {m.description}: {rows[-1][1]} {rows[-1][2]} ({took:.0f} s)", flush=True)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
        print("\n| mutation | file | tests that failed (-x) | test_oracle.py alone catches it |\n|---|---|---|---|")
        for m, result, oracle in rows:
            print(f"| {m.description} | `{m.file}` | {result} | {oracle} |")
        print(f"\n{len(rows) - bad} of {len(rows)} mutations caught")
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"copies kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
