"""What deploy/Dockerfile puts into the image is enough to start every process.

No Docker engine is needed: the build stage's COPY lines are read from the Dockerfile, exactly
those paths are copied into a temporary directory (as into the image's /src), and a fresh
interpreter imports every console script of pyproject.toml from there alone: the site-packages of
this venv give it the dependencies, but not the repository (``-S`` skips the .pth file of the
editable install that would otherwise find any package in the work tree).
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

IMPORT_SCRIPTS = r"""
import importlib, json, sys, tomllib
from pathlib import Path
here = Path.cwd().resolve()
scripts = tomllib.loads(Path("pyproject.toml").read_text())["project"]["scripts"]
out = {}
for name, target in sorted(scripts.items()):
    module, _, attr = target.partition(":")
    try:
        loaded = importlib.import_module(module)
        entry = getattr(loaded, attr)
        where = Path(loaded.__file__).resolve()
        out[name] = "ok" if callable(entry) and where.is_relative_to(here) else f"not from the image: {where}"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
# imports inside functions too (crm-mail imports the SDK when it starts): every top-level name any
# module of the image imports must be found, in the image or among the dependencies
import ast, importlib.util
for path in sorted(here.rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            top = name.split(".")[0]
            if top not in sys.modules and importlib.util.find_spec(top) is None:
                out[f"{path.relative_to(here)}: import {name}"] = "not found"
print(json.dumps(out))
"""


def build_stage_copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY of the build stage (the one that runs ``pip install .``)."""
    stages: dict[str, list] = {}
    current = None
    for line in DOCKERFILE.read_text().splitlines():
        if not line.strip().upper().startswith(("FROM ", "COPY ")):  # RUN lines continue, with any quoting
            continue
        words = shlex.split(line, comments=True)
        if words[0].upper() == "FROM":
            current = stages.setdefault(words[-1] if len(words) > 2 and words[-2].upper() == "AS" else "", [])
        elif words[0].upper() == "COPY" and current is not None and not any(w.startswith("--from") for w in words):
            args = [w for w in words[1:] if not w.startswith("--")]
            current.append((args[:-1], args[-1]))
    # the runtime stage copies the venv --from=build, and a config file out of the Python path
    return stages["build"]


def copy_like_docker(dest_root: Path) -> None:
    for sources, dest in build_stage_copies():
        for pattern in sources:
            for found in glob.glob(str(ROOT / pattern)):
                path = Path(found)
                target = dest_root / dest / path.name if dest.endswith("/") else dest_root / dest
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)


def test_the_build_stage_copies_every_package_pyproject_declares(tmp_path):
    copy_like_docker(tmp_path)
    import tomllib
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    missing = [p for p in declared if not (tmp_path / p.rstrip("*")).is_dir()]
    assert not missing, f"deploy/Dockerfile does not COPY {missing}: `pip install .` would leave them out"


def test_every_console_script_imports_from_the_image_contents_alone(tmp_path):
    copy_like_docker(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CRM_"))}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    r = subprocess.run([sys.executable, "-S", "-c", IMPORT_SCRIPTS], cwd=tmp_path, env=env,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert set(results) >= {"crm", "crm-ingest", "crm-processor", "crm-api", "crm-simulator", "crm-webhooks",
                            "crm-mail"}
    assert {name: why for name, why in results.items() if why != "ok"} == {}
