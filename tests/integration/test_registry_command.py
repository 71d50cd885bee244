"""`processor registry`: the local schema registry a user starts from the command line.

The command runs as a real process: its first stdout line is the full Confluent-compatible
URL (the `/apis/ccompat/v7` path included), which `processor schema` then uses as
printed; SIGTERM stops it with status 0 and nothing left listening."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from processor.devtools.local_kafka import ToolMissing
from processor.devtools.registry import CONFLUENT_API, RegistryError, ensure_registry, find_java
from tests.procs import ROOT, processor_cmd

pytestmark = pytest.mark.slow


def _first_line(proc: subprocess.Popen[str], timeout: float, err: Path) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    assert line, f"no URL on stdout after {timeout:.0f}s; stderr:\n{err.read_text()[-3000:]}"
    return line


def test_registry_prints_its_full_url_and_the_schema_commands_use_it(
        tmp_path: Path, schema_registry_url: str) -> None:
    """With the tests' own registry running (`schema_registry_url`), as a user's may be."""
    try:
        find_java()
        ensure_registry()
    except (ToolMissing, RegistryError) as error:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"no schema registry: {error} (CI=true: this test must run)")
        pytest.skip(f"no schema registry: {error}")
    err = (tmp_path / "registry.err").open("w")
    proc = subprocess.Popen(processor_cmd("registry"), stdout=subprocess.PIPE, stderr=err,
                            text=True, cwd=tmp_path)
    try:
        # The tests' own registry (`schema_registry_url`) may be running too: two must
        # not collide (Quarkus's management port once did).
        url = _first_line(proc, 120, tmp_path / "registry.err")
        assert url.startswith("http://127.0.0.1:") and url.endswith(CONFLUENT_API), url
        with urllib.request.urlopen(url + "/subjects", timeout=10) as answer:
            assert answer.status == 200

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        registered = subprocess.run(
            processor_cmd("schema", "register", "--registry-url", url, "--topic", "orders"),
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert registered.returncode == 0, registered.stderr
        shown = subprocess.run(
            processor_cmd("schema", "show", "--registry-url", url, "--topic", "orders"),
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert shown.returncode == 0, shown.stderr
        assert "orders-value" in shown.stdout and '"Artifact"' in shown.stdout, shown.stdout

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "registry.err").read_text()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the Java process is gone with it
            try:
                urllib.request.urlopen(url + "/subjects", timeout=1).close()
            except (urllib.error.URLError, OSError):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{url} still answers after the command exited")
        assert "ready in" in (tmp_path / "registry.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        err.close()
