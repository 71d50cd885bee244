"""The supervisor of `processor pipeline up`, with stand-in processes for the stages (no
Kafka): their environment, restarts with backoff, stops in file order, kills; and the
figures of `processor pipeline status`, from a metrics endpoint served here."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.core.errors import ConfigError, ProcessorError
from processor.pipeline import parse_pipeline
from processor.pipeline.status import parse_metrics, stage_rows, status_table
from processor.pipeline.supervisor import (
    Backoff,
    ClientSettings,
    Supervisor,
    read_state,
    refuse_second_run,
    stop_supervisor,
)

pytestmark = pytest.mark.timeout(60)

FILE = """\
name: two
defaults: {bootstrap_servers: "kafka:9092", shutdown_timeout: 1, env: {MODE: ok}}
topics: {a: {input: true}, b: {}, c: {}, dlq: {}}
stages:
  first: {handlers: [validate], input_topic: a, output_topic: b, dlq_topic: dlq,
          scale: {replicas: 2}}
  second: {handlers: [validate], input_topic: b, output_topic: c, batch_size: 7}
"""

# A stand-in for `processor run`: notes its start, its environment and its stop in
# $RECORD; MODE=crash exits at once, MODE=stubborn ignores SIGTERM.
STAND_IN = """\
import json, os, signal, sys, time
record = os.environ["RECORD"]
me = os.environ["PROCESSOR_NAME"] + "." + os.environ.get("PROCESSOR_REPLICA_ID", "?")
def note(what):
    with open(record, "a") as f:
        f.write(json.dumps([what, me, dict(os.environ) if what == "start" else None]) + "\\n")
mode = os.environ.get("MODE")
def stop(signum, frame):
    note("stop")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else stop)
note("start")
if mode == "crash":
    sys.exit(3)
print("serving", flush=True)
while True:
    time.sleep(0.05)
"""


def notes(path: Path) -> list[tuple[str, str, dict[str, str] | None]]:
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]


def supervisor(tmp_path: Path, text: str = FILE, **kwargs: object) -> Supervisor:
    environ = {"PATH": os.environ.get("PATH", ""), "RECORD": str(tmp_path / "record"),
               "PROCESSOR_CONFIG": "/nowhere.yaml", "PROCESSOR_BATCH_SIZE": "3",
               "PROCESSOR_KAFKA__SASL_PASSWORD": "not for the stages"}
    return Supervisor(parse_pipeline(text, "two.yaml"), tmp_path / "run",
                      command=[sys.executable, "-c", STAND_IN], environ=environ,
                      **kwargs)  # type: ignore[arg-type]


def wait_until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_backoff_doubles_up_to_its_limit() -> None:
    assert [Backoff().delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert Backoff(initial=0.5, limit=3).delay(4) == 3


def test_every_replica_gets_its_settings_and_the_stages_stop_in_file_order(
        tmp_path: Path) -> None:
    sup = supervisor(tmp_path, client=ClientSettings("127.0.0.1:9999",
                                                     {"client.rack": "r1"}))
    record = tmp_path / "record"
    sup.start()
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(sup.run()))
    thread.start()
    try:
        wait_until(lambda: len(notes(record)) == 3)
        state = read_state(tmp_path / "run")
        assert state is not None and state["state"] == "running"
        assert state["supervisor"]["pid"] == os.getpid()
        assert [s["name"] for s in state["stages"]] == ["first", "second"]
        first, second = state["stages"]
        assert (first["input_topics"], first["output_topics"], first["dlq_topic"]) == (
            ["a"], ["b"], "dlq")
        assert [Path(r["log"]).name for r in first["replicas"]] == ["first.0.log",
                                                                    "first.1.log"]
        assert Path(second["replicas"][0]["log"]).name == "second.log"
        urls = [r["metrics"] for s in state["stages"] for r in s["replicas"]]
        assert len(set(urls)) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls)
        envs = {who: env for what, who, env in notes(record)
                if what == "start" and env is not None}
        assert sorted(envs) == ["first.0", "first.1", "second.0"]
        env = envs["second.0"]
        assert assert_subset(env, {
            "PROCESSOR_NAME": "second", "PROCESSOR_GROUP": "second",
            "PROCESSOR_INPUT_TOPIC": "b", "PROCESSOR_OUTPUT_TOPIC": "c",
            "PROCESSOR_BATCH_SIZE": "7", "PROCESSOR_SHUTDOWN_TIMEOUT": "1",
            "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9999",
            "PROCESSOR_KAFKA__CLIENT_RACK": "r1", "PROCESSOR_METRICS_HOST": "127.0.0.1",
            "PROCESSOR_REPLICA_ID": "0", "MODE": "ok"})
        assert env["PROCESSOR_METRICS_PORT"] == second["replicas"][0]["metrics"].split(
            ":")[2].split("/")[0]
        assert "PROCESSOR_CONFIG" not in env and "PROCESSOR_KAFKA__SASL_PASSWORD" not in env
        assert "PROCESSOR_BATCH_SIZE" not in envs["first.1"]  # not the supervisor's
        assert envs["first.1"]["PROCESSOR_DLQ_TOPIC"] == "dlq"
        assert (tmp_path / "run" / "second.log").read_text() == "serving\n"
    finally:
        sup.request_stop()
        thread.join(30)
    assert done == [0]
    stops = [who for what, who, _ in notes(record) if what == "stop"]
    assert sorted(stops[:2]) == ["first.0", "first.1"] and stops[2:] == ["second.0"]
    after = read_state(tmp_path / "run")
    assert after is not None and (after["state"], after["exit_code"]) == ("stopped", 0)
    assert {r["state"] for s in after["stages"] for r in s["replicas"]} == {"stopped"}


def assert_subset(env: dict[str, str] | None, wanted: dict[str, str]) -> bool:
    assert env is not None
    assert {k: env.get(k) for k in wanted} == wanted
    return True


def test_a_stage_waits_for_its_lag_to_reach_zero_before_it_is_stopped(
        tmp_path: Path) -> None:
    lags = iter([4, 2, 0, 0])
    asked: list[str] = []

    def lag_of(stage: object) -> int | None:
        asked.append(getattr(stage, "name", ""))
        return next(lags)

    sup = supervisor(tmp_path, lag_of=lag_of)
    sup.start()
    wait_until(lambda: len(notes(tmp_path / "record")) == 3)
    sup.request_stop()
    assert sup.run() == 0
    assert asked == ["second"] * 4  # the first stage is stopped at once


def test_a_crashing_stage_is_restarted_with_backoff_and_then_given_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "processor.pipeline.supervisor")
    text = FILE.replace("  second: {", "  second: {env: {MODE: crash}, ")
    sup = supervisor(tmp_path, text, backoff=Backoff(initial=0.05, limit=0.1),
                     max_crashes=3)
    sup.start()
    started = time.monotonic()
    assert sup.run() == 1
    assert time.monotonic() - started < 10
    starts = [who for what, who, _ in notes(tmp_path / "record") if what == "start"]
    assert starts.count("second.0") == 4  # the first start and 3 restarts
    state = read_state(tmp_path / "run")
    assert state is not None and state["exit_code"] == 1
    crashed = state["stages"][1]["replicas"][0]
    assert (crashed["state"], crashed["restarts"], crashed["exit_code"]) == ("failed", 3, 3)
    text_log = caplog.text
    assert "starting it again in 0.1s" in text_log and "in 0.1s" in text_log
    assert "crashed 4 times in a row" in text_log


def test_a_stage_that_ignores_sigterm_is_killed_and_the_exit_status_says_so(
        tmp_path: Path) -> None:
    text = FILE.replace("  second: {", "  second: {env: {MODE: stubborn}, ")
    sup = supervisor(tmp_path, text, stop_margin=0.5)
    sup.start()
    wait_until(lambda: len(notes(tmp_path / "record")) == 3)
    sup.request_stop()
    started = time.monotonic()
    assert sup.run() == 1
    assert 1.4 < time.monotonic() - started < 10  # shutdown_timeout 1 + margin 0.5
    assert sup.killed == ["second.0"]


def test_down_and_a_second_up_need_a_live_supervisor(tmp_path: Path) -> None:
    with pytest.raises(ProcessorError, match="no pipeline runs"):
        stop_supervisor(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps(
        {"state": "running", "supervisor": {"pid": os.getpid()}}))
    with pytest.raises(ConfigError, match="runs already"):
        refuse_second_run(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps(
        {"state": "stopped", "supervisor": {"pid": os.getpid()}}))
    refuse_second_run(tmp_path)


def test_status_without_a_state_file(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(FILE)
    assert main(["pipeline", "status", str(path), "--run-dir", str(tmp_path / "r")]) == 1
    assert "not running" in capsys.readouterr().out


METRICS = """\
# HELP processor_consumed_total Records taken from the input topic.
# TYPE processor_consumed_total counter
processor_consumed_total{stage="first",topic="a"} %(consumed)s
# HELP processor_produced_total Records produced to an output or dead-letter topic.
# TYPE processor_produced_total counter
processor_produced_total{stage="first",topic="b"} %(produced)s
processor_produced_total{stage="first",topic="dlq"} 5.0
# HELP processor_dropped_total Input records a handler dropped (returned None).
# TYPE processor_dropped_total counter
processor_dropped_total{stage="first",topic="a"} 1.0
# HELP processor_dead_lettered_total Input records sent to the dead-letter topic.
# TYPE processor_dead_lettered_total counter
processor_dead_lettered_total{reason="invalid",stage="first",topic="a"} 3.0
processor_dead_lettered_total{reason="decode",stage="first",topic="a"} 2.0
# HELP processor_consumer_lag Records not read yet.
# TYPE processor_consumer_lag gauge
processor_consumer_lag{partition="0",stage="first",topic="a"} 4.0
processor_consumer_lag{partition="1",stage="first",topic="a"} 6.0
"""


def test_the_figures_of_the_metrics() -> None:
    sample = parse_metrics(METRICS % {"consumed": 100.0, "produced": 94.0}, "dlq")
    assert (sample.consumed, sample.produced, sample.dropped, sample.dead_lettered,
            sample.lag) == (100, 94, 1, 5, 10)


@pytest.fixture
def endpoint() -> Iterator[tuple[str, dict[str, float]]]:
    figures = {"consumed": 100.0, "produced": 94.0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (METRICS % figures).encode() if self.path == "/metrics" else b"ok"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", figures
    finally:
        server.shutdown()
        server.server_close()


def test_status_rows_rates_from_two_scrapes(
        endpoint: tuple[str, dict[str, float]]) -> None:
    url, figures = endpoint
    state = {"stages": [{"name": "first", "dlq_topic": "dlq", "replicas": [
        {"index": 0, "pid": os.getpid(), "state": "running", "metrics": f"{url}/metrics",
         "health": f"{url}/healthz", "restarts": 2},
        {"index": 1, "pid": None, "state": "restarting", "metrics": f"{url}/metrics",
         "health": f"{url}/healthz", "restarts": 0}]}]}
    rows, samples = stage_rows(state)
    assert rows[0].in_rate is None
    time.sleep(0.2)
    figures.update(consumed=150.0, produced=140.0)
    rows, _ = stage_rows(state, samples)
    row = rows[0]
    assert (row.up, row.replicas, row.consumed, row.produced, row.dead_lettered, row.lag,
            row.health, row.restarts) == (1, 2, 150, 140, 5, 10, "1/2 ok", 2)
    assert row.in_rate is not None and row.out_rate is not None
    assert 50 / 0.6 < row.in_rate < 50 / 0.19 and row.out_rate > row.in_rate * 0.9
    table = status_table(rows).splitlines()
    assert table[0].split() == ["STAGE", "UP", "IN", "IN/S", "OUT", "OUT/S", "DROPPED",
                                "DEAD", "LAG", "HEALTH", "RESTARTS"]
    assert table[1].split()[:3] == ["first", "1/2", "150"]
    assert table[1].split()[4] == "140" and table[1].split()[6:] == [
        "1", "5", "10", "1/2", "ok", "2"]
