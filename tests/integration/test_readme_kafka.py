"""The README's Kafka quick start, run as written.

The shell block after "On Kafka:" is read from README.md, so the README and this test
cannot drift apart. Each command runs in bash, in a temporary folder that holds the
README's `my_handlers.py` and nothing else, with `PORT` replaced by the port the broker
printed and nothing else changed. A command the README runs in the background (`... &`)
is started in the background here too, and stopped by its pid at the end (SIGTERM: the
stage drains and commits, the broker stops cleanly); every other command must end, within
a bound, with status 0.

The environment holds no `PROCESSOR_BOOTSTRAP_SERVERS` or `PYTHONPATH`, so the block
works on its own; `PROCESSOR_METRICS_HOST=127.0.0.1` keeps the stage's metrics port on
loopback, which does not change what the block does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.broker_process import start_broker
from tests.procs import ROOT, stop

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]

README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMAND_TIMEOUT = 120.0
"""Seconds any one foreground command of the block may take."""


@dataclass(frozen=True)
class Command:
    text: str
    background: bool


def kafka_block() -> list[Command]:
    """The commands of the shell block after "On Kafka:", continuation lines joined."""
    match = re.search(r"On Kafka:\n\n```sh\n(.*?)```", README, flags=re.S)
    assert match is not None, "README.md has no shell block after 'On Kafka:'"
    commands = []
    for line in re.sub(r"\\\n\s*", " ", match.group(1)).splitlines():
        if not line.strip():
            continue
        background = re.fullmatch(r"(.*?)\s*&\s*(#.*)?", line)
        commands.append(Command(background.group(1), True) if background
                        else Command(line, False))
    return commands


def handler_module() -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if b.startswith("# my_handlers.py"))


def test_the_kafka_block_reads_as_expected() -> None:
    """The block starts the broker in the background first, and uses only PORT."""
    commands = kafka_block()
    assert commands[0] == Command("processor broker", True)
    for command in commands:
        assert command.text.startswith(("processor ", "printf ")), command
        assert re.findall(r"127\.0\.0\.1:\w+", command.text) in (
            [], ["127.0.0.1:PORT"]), command


@dataclass(frozen=True)
class Background:
    text: str
    log: Path
    proc: subprocess.Popen[bytes]


def run_foreground(text: str, cwd: Path, env: dict[str, str],
                   background: list[Background]) -> subprocess.CompletedProcess[str]:
    """Run one command in bash to its end, within `COMMAND_TIMEOUT`; fail at once, with
    its log, when a background command ends meanwhile (the stage or the broker died)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + COMMAND_TIMEOUT
        try:
            while True:
                try:
                    proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                for other in background:
                    if other.proc.poll() is not None:
                        raise AssertionError(
                            f"{other.text!r} ended (exit {other.proc.returncode}) while "
                            f"{text!r} ran:\n{other.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{text!r} did not end in {COMMAND_TIMEOUT:g}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           out.read().decode(), err.read().decode())


def test_the_readme_kafka_section_runs_as_written(tmp_path: Path) -> None:
    work, logs = tmp_path / "quickstart", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    (work / "my_handlers.py").write_text(handler_module(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PROCESSOR_BOOTSTRAP_SERVERS", "PROCESSOR_CONFIG")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PROCESSOR_METRICS_HOST"] = "127.0.0.1"

    broker_cmd, *rest = kafka_block()
    broker, port = start_broker(["bash", "-c", "exec " + broker_cmd.text], work, env, logs)
    background = [Background(broker_cmd.text, logs / "broker.err", broker)]
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for command in rest:
            text = command.text.replace("127.0.0.1:PORT", f"127.0.0.1:{port}")
            if command.background:
                log = logs / f"{text.split()[1]}.log"
                with log.open("wb") as out:
                    background.append(Background(text, log, subprocess.Popen(
                        ["bash", "-c", "exec " + text], cwd=work, env=env, stdout=out,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)))
                continue
            result = run_foreground(text, work, env, background)
            assert result.returncode == 0, f"{text}\n{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
            assert not re.search(r"^WARNING", result.stderr, flags=re.M), result.stderr
            results[text.split()[1] if text.startswith("processor ") else text] = result
    finally:
        codes = {b.text: stop(b.proc) for b in reversed(background)}
    stage_log = (logs / "run.log").read_text()
    assert codes == {b.text: 0 for b in background}, stage_log[-3000:]

    assert results["topics"].stdout.splitlines() == [
        f"{t}: created, 3 partition(s), replication factor 1" for t in ("in", "out", "in.dlq")]
    orders = [json.loads(line) for line in (work / "orders.jsonl").read_text().splitlines()]
    assert "3 artifacts written to in" in results["produce"].stderr
    shouted = [json.loads(line) for line in results["tail"].stdout.splitlines()]
    assert len(shouted) == len(orders) == 3
    assert sorted(json.loads(a["payload"])["ORDER"] for a in shouted) == [1, 2, 3]
    assert all(a["meta"]["shouted"] is True for a in shouted)
    assert {a["payload"] for a in shouted} == {
        json.dumps(order).upper() for order in orders}
    assert "Traceback" not in stage_log
    assert re.search(r"event=stopped .*consumed=3 produced=3 dropped=0 dead_lettered=0",
                     stage_log), stage_log[-3000:]
    assert "event=shutdown signal=SIGTERM" in stage_log
