"""The body of the network fault tests: two stages reading through a `FaultProxy`."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from processor.backends.kafka import KafkaBroker
from processor.devtools.local_kafka import LocalKafka, free_ports
from tests.faults.chaos import Supervised, run_until_caught_up, stage_args, tally
from tests.faults.proxy import FaultProxy
from tests.procs import Feeder, wait_for

COUNT = 4_000
RATE = 400
GUARANTEES = ("at-least-once", "exactly-once")


class Readiness:
    """Polls a stage's `/readyz` twice a second and remembers the answers."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/readyz"
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readyz", daemon=True)

    def status(self) -> int:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0  # not serving (starting, restarting)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.answers.append((time.monotonic(), self.status()))

    def start(self) -> Readiness:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def not_ready_between(self, start: float, end: float) -> int:
        """How many polls in [start, end] answered 503."""
        return sum(1 for t, code in self.answers if start <= t <= end and code == 503)


def run_network_fault(kafka: LocalKafka, proxy: FaultProxy, what: str,
                      fault: Callable[[FaultProxy], None], name: Callable[[str], str],
                      tmp_path: Path) -> dict[str, int]:
    """Feed, run both stages through the proxy, inject `fault` mid-stream, catch up, count.

    Returns, per guarantee, how many readiness polls answered 503 during the fault."""
    broker = KafkaBroker(kafka.bootstrap_servers)  # the direct way in, for the test
    admin = broker.admin()
    through_proxy = f"127.0.0.1:{proxy.port}"
    source, dlq = name("nin"), name("ndlq")
    sinks = {g: name(f"n{g[:5]}") for g in GUARANTEES}
    for topic in (source, dlq, *sinks.values()):
        admin.create_topic(topic, partitions=3)
    groups = {g: name(f"{what}{'eos' if g == 'exactly-once' else 'alo'}") for g in GUARANTEES}
    ports = dict(zip(GUARANTEES, free_ports(len(GUARANTEES)), strict=True))
    extra = ["--set", "socket.timeout.ms=10000", "--metrics-host", "127.0.0.1"]
    feeder = Feeder(broker, source, COUNT, keys=30, per_second=RATE, chunk=100).start()
    stages = {g: Supervised(stage_args(through_proxy, source, sinks[g], dlq, groups[g], g,
                                       extra=[*extra, "--metrics-port", str(ports[g])]),
                            tmp_path / f"{g}.log") for g in GUARANTEES}
    probes = {g: Readiness(ports[g]) for g in GUARANTEES}
    try:
        wait_for(lambda: all(p.status() == 200 for p in probes.values()), 60,
                 "both stages to be ready")
        for probe in probes.values():
            probe.start()
        wait_for(lambda: all(sum(admin.high_watermarks(s).values()) > 300
                             for s in sinks.values()), 60, "both stages to be mid-stream")
        began = time.monotonic()
        fault(proxy)
        ended = time.monotonic()
        print(f"{what}: fault lasted {ended - began:.1f}s")
        sent = feeder.join(120)
        run_until_caught_up(broker, list(stages.values()), list(groups.values()), source, 120)
        wait_for(lambda: all(p.status() == 200 for p in probes.values()), 30,
                 "both stages to be ready again")
    finally:
        for probe in probes.values():
            probe.stop()
        codes = {g: stage.stop() for g, stage in stages.items()}
    outages: dict[str, int] = {}
    for guarantee, stage in stages.items():
        assert codes[guarantee] == 0, stage.log.read_text()[-3000:]
        counted = tally(broker, sent, sinks[guarantee])
        outages[guarantee] = probes[guarantee].not_ready_between(began, ended)
        print(counted.line(f"{what} {guarantee} (stage restarts {stage.restarts}, "
                           f"/readyz 503 polls during the fault {outages[guarantee]})"))
        assert counted.lost == 0
        if guarantee == "exactly-once":
            assert counted.duplicated == 0
            assert counted.received == COUNT
    return outages
