"""The broker unreachable through the network, for a while (a fault-injecting proxy).

As `test_network_faults`, with outages:

* blackhole: every open connection goes silent for good (half-open: no FIN, no RST) while
  new ones work; the clients must notice by their own timeouts (socket.timeout.ms 10 s)
  and reconnect;
* unreachable: every connection reset and new ones refused, for 10 s.

Nothing is lost and exactly-once duplicates nothing. When the broker is unreachable,
`/readyz` answers 503 while it is and 200 again after. In a blackhole new connections
work, so whether a readiness probe lands on a silent connection (503) or a new one (200)
is chance: that case asserts nothing of `/readyz`.
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


def blackhole(proxy: FaultProxy) -> None:
    assert proxy.blackhole() > 0
    time.sleep(15)
    proxy.release_blackholed()


def unreachable(proxy: FaultProxy) -> None:
    proxy.refuse = True
    try:
        proxy.cut()
        time.sleep(10)
    finally:
        proxy.refuse = False


@pytest.mark.parametrize("fault", [blackhole, unreachable], ids=lambda f: f.__name__)
def test_stages_ride_out_an_outage(
    fault: Callable[[FaultProxy], None], proxied_kafka: tuple[LocalKafka, FaultProxy],
    unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    kafka, proxy = proxied_kafka
    outages = run_network_fault(kafka, proxy, fault.__name__, fault, unique_name, tmp_path)
    if fault is unreachable:
        assert all(polls > 0 for polls in outages.values()), outages
