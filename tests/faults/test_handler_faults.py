"""Handlers that hang or leak, in a real stage on Kafka.

* hung: one record makes the handler hang for ever. With `--handler-timeout 2` and two
  attempts, the record is dead-lettered (`retries-exhausted`), every other record is
  produced, `/healthz` answers 503 from the first timeout on (the stuck call holds a
  thread), and the stage stays in its group: it commits the whole input and never logs
  its partitions lost.
* leaking: the handler keeps 1 MiB of every fifth record for ever. With
  `--memory-limit 160` the worker stops cleanly each time it passes 160 MiB, the runner
  restarts it (a log line each time), and at-least-once loses nothing.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.backends.kafka import KafkaBroker
from processor.core.artifact import Artifact
from processor.devtools.local_kafka import LocalKafka, free_ports
from processor.runtime.dead_letters import H_REASON, header_dict
from processor.serde.codec import Codec
from tests.faults.chaos import stage_args, tally
from tests.procs import group_caught_up, start, stop, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _produce(broker: KafkaBroker, topic: str, count: int, mark: str, every: int
             ) -> list[Artifact]:
    codec = Codec()
    producer = broker.producer(client_id="test-feed")
    sent = []
    for i in range(count):
        meta: dict[str, str | int | float | bool | bytes] = {"seq": i}
        if i % every == every // 2:
            meta[mark] = True
        artifact = Artifact.new(f"payload-{i}".ljust(120, "."), meta=meta)
        producer.produce(topic, codec.encode(artifact), f"k{i % 30}".encode())
        sent.append(artifact)
    assert producer.flush(60) == 0
    producer.close()
    return sent


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def _topics(kafka: LocalKafka, name: Callable[[str], str]) -> tuple[KafkaBroker, str, str,
                                                                      str, str]:
    broker = KafkaBroker(kafka.bootstrap_servers)
    source, sink, dlq = name("hin"), name("hout"), name("hdlq")
    for topic in (source, sink, dlq):
        broker.admin().create_topic(topic, partitions=3)
    return broker, source, sink, dlq, name("handler")


def test_hung_handler(own_kafka: LocalKafka, unique_name: Callable[[str], str],
                      tmp_path: Path) -> None:
    broker, source, sink, dlq, group = _topics(own_kafka, unique_name)
    count = 600
    sent = _produce(broker, source, count, "hang", every=count)  # one record hangs
    (port,) = free_ports(1)
    log = tmp_path / "stage.log"
    args = stage_args(own_kafka.bootstrap_servers, source, sink, dlq, group, "at-least-once",
                      handler="tests.faults.handlers:hang_on_marked",
                      extra=["--handler-timeout", "2", "--retry-max-attempts", "2",
                             "--retry-initial-backoff", "0.1", "--metrics-port", str(port),
                             "--metrics-host", "127.0.0.1"])
    proc = start(args, log)
    healthz = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_for(lambda: _status(healthz) == 503 or proc.poll() is not None, 60,
                 "/healthz to report the stuck handler")
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_for(lambda: group_caught_up(broker, group, source), 60, "the group to catch up")
        assert proc.poll() is None
        unhealthy = _status(healthz)
        began = time.monotonic()
    finally:
        code = stop(proc)
    stopped_in = time.monotonic() - began
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert unhealthy == 503
    assert "partitions lost" not in text
    counted = tally(broker, sent, sink, dlq, dead_expected=1)
    print(counted.line(f"hung handler (/healthz {unhealthy} while stuck, stopped in "
                       f"{stopped_in:.1f}s)"))
    assert counted.lost == 0
    assert counted.dead_lettered == 1
    consumer = broker.consumer(unique_name("dlq-reader"))
    consumer.subscribe([dlq])
    dead: list[str] = []
    deadline = time.monotonic() + 20
    while not dead and time.monotonic() < deadline:
        dead = [header_dict(m.headers())[H_REASON] for m in consumer.consume(10, 0.5)]
    consumer.close()
    assert dead == ["retries-exhausted"]


def test_leaking_handler_is_restarted_at_its_memory_limit(
    own_kafka: LocalKafka, unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    broker, source, sink, dlq, group = _topics(own_kafka, unique_name)
    count = 1_500
    sent = _produce(broker, source, count, "grow", every=5)  # 300 MiB kept in all
    log = tmp_path / "stage.log"
    args = stage_args(own_kafka.bootstrap_servers, source, sink, dlq, group, "at-least-once",
                      handler="tests.faults.handlers:hoard_memory",
                      extra=["--memory-limit", "160", "--log-level", "WARNING"])
    proc = start(args, log)
    try:
        wait_for(lambda: group_caught_up(broker, group, source) or proc.poll() is not None,
                 120, "the group to catch up")
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text[-3000:]
    restarts = len(re.findall(r"worker 0 stopped cleanly at its memory limit; restarting it",
                              text))
    assert re.search(r"worker 0: resident memory \d+ MiB is over the limit of 160 MiB", text)
    counted = tally(broker, sent, sink)
    print(counted.line(f"leaking handler (worker restarts at the memory limit {restarts})"))
    assert restarts >= 1
    assert counted.lost == 0
