"""The compose stack on the host network: Kafka, the generator, the three chained demo stages
(validate -> transform -> enrich) and Prometheus, from docker-compose.yml with the overlay
deploy/compose.host.yml.

Records flow through all three stages with none lost (each stage's input equals what it passed
on, dropped or dead-lettered, from Prometheus, against the topics' counts), Prometheus reports
every stage target up, and `docker compose down` returns promptly.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from processor.backends.kafka import KafkaBroker
from tests.containers.conftest import ROOT, report
from tests.containers.engine import Engine
from tests.containers.ports import container_sockets, is_free, is_loopback, listeners
from tests.containers.stage import committed, topic_count, wait_until

# Cold, the first test's set-up installs the engine, builds the images and Compose.
pytestmark = pytest.mark.timeout(1800)

PROJECT = "processor-compose-test"
FILES = ("docker-compose.yml", "deploy/compose.host.yml")
BOOTSTRAP = "127.0.0.1:19092"
PROMETHEUS = "http://127.0.0.1:19090"
PORTS = (19092, 19093, 19090, 19101, 19102, 19103)
CHAIN = (("validate", "orders.raw", "orders.validated"),
         ("transform", "orders.validated", "orders.transformed"),
         ("enrich", "orders.transformed", "orders.enriched"))
DOWN_SECONDS = 30.0


class Compose:
    """`docker compose` on the stack, with the image names this test run built."""

    def __init__(self, engine: Engine, images: dict[str, str]) -> None:
        self.env = engine.env()
        self.env.update({
            "PROCESSOR_IMAGE_STAGE": images["stage"],
            "PROCESSOR_IMAGE_KAFKA": images["kafka"],
            "PROCESSOR_IMAGE_PROMETHEUS": images["prometheus"],
        })

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = ["docker", "compose", "-p", PROJECT]
        for name in FILES:
            command += ["-f", str(ROOT / name)]
        result = subprocess.run([*command, *args], env=self.env, cwd=ROOT, text=True,
                                capture_output=True, timeout=timeout, check=False)
        assert result.returncode == 0, f"docker compose {' '.join(args)}: {result.stderr}"
        return result


def prometheus(path: str, **params: str) -> Any:
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def per_stage(metric: str) -> dict[str, float]:
    """`metric` summed per stage (the target label set in prometheus.host.yml)."""
    result = prometheus("/api/v1/query", query=f'sum by (stage) ({metric}{{job="processor"}})')
    return {item["metric"]["stage"]: float(item["value"][1]) for item in result["result"]}


def stage_targets() -> dict[str, str]:
    try:
        data = prometheus("/api/v1/targets", state="active")
    except OSError:
        return {}
    return {t["labels"].get("stage", t["labels"]["job"]): t["health"]
            for t in data["activeTargets"] if t["labels"]["job"] == "processor"}


@pytest.fixture
def stack(compose: Engine, images: dict[str, str]) -> Iterator[Compose]:
    busy = [port for port in PORTS if not is_free(port)]
    assert not busy, f"the overlay's loopback ports {busy} are in use"
    run = Compose(compose, images)
    started = time.monotonic()
    run("up", "-d", "--no-build", "--pull", "never")
    report(f"compose stack: `up -d` returned in {time.monotonic() - started:.1f} s")
    try:
        yield run
    finally:
        if any(not is_free(port) for port in PORTS):
            run("down", "--timeout", "60", timeout=180)


def test_records_flow_through_the_three_stages_and_prometheus_sees_them(
        stack: Compose) -> None:
    broker = KafkaBroker(BOOTSTRAP)
    wait_until(lambda: stage_targets() == {s: "up" for s, _, _ in CHAIN}, 180,
               "Prometheus to report every stage target up")
    report(f"Prometheus targets up: {', '.join(sorted(stage_targets()))} (job processor)")
    containers = stack("ps", "-q").stdout.split()
    opened = listeners(container_sockets(containers))
    assert {port for _, port in opened} >= {19092, 19093, 19090, 19101, 19102, 19103}
    wide = sorted(address for address in opened if not is_loopback(address[0]))
    assert not wide, f"the stack listens beyond loopback: {wide}"
    report(f"compose: the stack's {len(containers)} containers listen on "
           f"{len(opened)} sockets, all on loopback: "
           + ", ".join(f"{a}:{p}" for a, p in sorted(opened, key=lambda x: x[1])))
    wait_until(lambda: topic_count(broker, "orders.enriched") > 0, 120,
               "records through all three stages")

    # Stop the source, then let every stage catch up with its input.
    started = time.monotonic()
    stack("stop", "generator")
    stop_generator = time.monotonic() - started

    def caught_up() -> bool:
        for stage, source, _ in CHAIN:
            ends = broker.admin().high_watermarks(source)
            offsets = committed(broker, stage, source)
            if any(offsets.get(tp, 0) < end for tp, end in ends.items()):
                return False
        return True

    wait_until(caught_up, 120, "the three stages to consume all their input")
    counts = {t: topic_count(broker, t) for t in
              ("orders.raw", "orders.validated", "orders.transformed", "orders.enriched",
               "orders.dlq")}

    def metrics_final() -> bool:
        consumed = per_stage("processor_consumed_total")
        return all(consumed.get(stage) == counts[source] for stage, source, _ in CHAIN)

    wait_until(metrics_final, 60, "Prometheus to scrape the final counters")
    consumed = per_stage("processor_consumed_total")
    dropped = per_stage("processor_dropped_total")
    dead = per_stage("processor_dead_lettered_total")
    for stage, source, target in CHAIN:
        passed_on = counts[target]
        assert consumed[stage] == counts[source]
        assert consumed[stage] == passed_on + dropped.get(stage, 0) + dead.get(stage, 0), stage
    assert counts["orders.dlq"] == sum(dead.values())
    report(f"compose chain: {counts['orders.raw']} in (orders.raw), "
           f"{counts['orders.enriched']} out (orders.enriched), "
           f"{int(sum(dropped.values()))} dropped, {counts['orders.dlq']} dead-lettered, 0 lost; "
           f"per stage in/out: " + ", ".join(
               f"{s} {int(consumed[s])}/{counts[t]}" for s, _, t in CHAIN))
    report(f"compose: generator stopped in {stop_generator:.1f} s")

    started = time.monotonic()
    stack("down", "--timeout", "60", timeout=180)
    down_seconds = time.monotonic() - started
    report(f"compose: `down` returned in {down_seconds:.1f} s")
    assert down_seconds < DOWN_SECONDS
    assert all(is_free(port) for port in PORTS)
