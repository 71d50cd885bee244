"""A slow or unreliable network between stages and broker (a fault-injecting proxy).

Both an at-least-once and an exactly-once stage reach the broker only through
`tests.faults.proxy.FaultProxy` while records are fed at a steady rate, and mid-stream:

* latency: 0.2 s added to every chunk, both ways, for 8 s;
* bandwidth: 100 kB/s, both ways, for 8 s;
* cut: every connection reset, mid-request, four times 1.5 s apart.

Nothing is lost, exactly-once duplicates nothing, and `/readyz` is ready again after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from processor.devtools.local_kafka import LocalKafka
from tests.faults.network import run_network_fault
from tests.faults.proxy import FaultProxy

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def latency(proxy: FaultProxy) -> None:
    proxy.latency = 0.2
    try:
        time.sleep(8)
    finally:
        proxy.latency = 0.0


def bandwidth(proxy: FaultProxy) -> None:
    proxy.bandwidth = 100_000
    try:
        time.sleep(8)
    finally:
        proxy.bandwidth = None


def cut(proxy: FaultProxy) -> None:
    for _ in range(4):
        assert proxy.cut() > 0
        time.sleep(1.5)


@pytest.mark.parametrize("fault", [latency, bandwidth, cut], ids=lambda f: f.__name__)
def test_stages_survive_a_bad_network(
    fault: Callable[[FaultProxy], None], proxied_kafka: tuple[LocalKafka, FaultProxy],
    unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    kafka, proxy = proxied_kafka
    run_network_fault(kafka, proxy, fault.__name__, fault, unique_name, tmp_path)
