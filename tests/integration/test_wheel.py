"""`processor broker` runs from an installed wheel, not only from a checkout.

The wheel is built from a copy of the sources (`pip wheel --no-deps`), and installed into
a fresh virtual environment without pip and without the system's site-packages, from
that wheel alone (`--no-index --find-links`). Its dependencies come from the environment
running the tests: a folder of links to exactly the distributions the wheel requires
(followed transitively), added to the new environment by a `.pth` file, so that pip
finds them installed and the sources under test are never on the path. Every command
runs in an empty temporary folder.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.integration.broker_process import start_broker
from tests.procs import ROOT, stop

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

BUILD_TIMEOUT = 300.0
STEP_TIMEOUT = 120.0


def requirements(dist: metadata.Distribution,
                 extras: frozenset[str] = frozenset()) -> list[tuple[str, frozenset[str]]]:
    """The distributions `dist` requires with the `extras` asked of it, each with the
    extras it is asked for in turn (a requirement whose environment marker does not hold
    here is left out)."""
    wanted = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(
            marker.evaluate({"extra": extra}) for extra in (extras or {""})
        ):
            continue
        wanted.append((requirement.name, frozenset(requirement.extras)))
    return wanted


def link_dependencies(target: Path) -> list[str]:
    """Link the installed files of every distribution `processor` needs into `target`;
    returns their names. The `processor` distribution itself is never linked."""
    seen: set[tuple[str, frozenset[str]]] = set()
    linked: set[str] = set()
    todo = requirements(metadata.distribution("processor"))
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, extras) in seen or key == "processor":
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add((key, extras))
        todo.extend(requirements(dist, extras))
        if key in linked:
            continue
        linked.add(key)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in Path(str(f)).parts}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists():
                (target / top).symlink_to(source)
    return sorted(linked)


def run(command: list[str], cwd: Path, env: dict[str, str],
        timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result


def test_processor_broker_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PIP_FIND_LINKS", "PROCESSOR_BOOTSTRAP_SERVERS")}

    # Build the wheel from a clean copy of the sources (no build output in the checkout).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "processor", source / "processor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    # The build backend comes from the package index, as for any sdist build.
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
         str(source)], elsewhere, dict(os.environ), BUILD_TIMEOUT)
    assert len(list(dist.glob("processor-*.whl"))) == 1

    # A fresh environment: no pip, no system site-packages; the dependencies linked in.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], elsewhere, env)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                  elsewhere, env).stdout.strip()
    deps = tmp_path / "deps"
    deps.mkdir()
    linked = link_dependencies(deps)
    assert {"confluent-kafka", "fastavro", "pydantic"} <= set(linked)
    (Path(purelib) / "processor-test-dependencies.pth").write_text(f"{deps}\n")
    assert sysconfig.get_path("purelib") != purelib

    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
         "--find-links", str(dist), "processor"], elsewhere, env)
    run([sys.executable, "-m", "pip", "--python", str(python), "check"], elsewhere, env)
    where = run([str(python), "-c", "import processor; print(processor.__file__)"],
                elsewhere, env).stdout.strip()
    assert Path(where) == Path(purelib) / "processor" / "__init__.py"
    # The wheel carries the codec compiled (setup.py), and runs it.
    codec = run([str(python), "-c", "from processor.serde import fast; print(fast.IMPLEMENTATION)"],
                elsewhere, env).stdout.strip()
    assert codec == "compiled (mypyc)"

    # The wheel's own `processor broker`, started from an empty folder.
    script = venv / "bin" / "processor"
    broker, port = start_broker([str(script), "broker"], elsewhere, env, tmp_path)
    try:
        bootstrap = f"127.0.0.1:{port}"
        created = run([str(script), "topics", "create", "--bootstrap-servers", bootstrap,
                       "from-the-wheel", "--partitions", "2"], elsewhere, env)
        assert created.stdout == "from-the-wheel: created, 2 partition(s), replication factor 1\n"
        described = run([str(script), "topics", "describe", "--bootstrap-servers", bootstrap,
                         "from-the-wheel"], elsewhere, env)
        assert described.stdout.splitlines()[0] == (
            "from-the-wheel: 2 partition(s), replication factor 1")
    finally:
        code = stop(broker)
    assert code == 0, (tmp_path / "broker.err").read_text()[-3000:]
