"""Readiness: is the broker answering? Asked from a thread of the stage's own.

The stage's loop can wait long in one call (a flush at a commit waits up to the commit's
timeout for acknowledgements), so a probe inside the loop would leave `/readyz` saying
ready through most of an outage. `BrokerProbe` asks instead from its own thread, every
`PROBE_INTERVAL` seconds: the watermarks of one assigned partition from its leader (a
round trip, at most `PROBE_TIMEOUT`). The librdkafka handle is thread-safe; the stage
stops the probe (`close()`) before it closes the consumer, so the probe never uses a
destroyed handle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

from processor.backends.abstract import Consumer, TopicPartition
from processor.core.errors import ProcessorError
from processor.ops.health import HealthState

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 5.0
"""Seconds between two probes of the broker."""
PROBE_TIMEOUT = 2.0
"""Seconds a probe waits for the broker's answer."""


class BrokerProbe:
    """Sets `health.set_broker_ok()` from a watermark query every `PROBE_INTERVAL`."""

    def __init__(self, stage: str, consumer: Consumer, health: HealthState,
                 assigned: Callable[[], Collection[TopicPartition]]) -> None:
        self.stage = stage
        self.consumer = consumer
        self.health = health
        self.assigned = assigned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"broker-probe-{stage}")

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def stop(self) -> None:
        """Start no more probes (the stage calls it when asked to stop, so that the probe
        under way, if any, has ended by the time the consumer closes)."""
        self._stop.set()

    def close(self) -> None:
        """Stop probing; returns once no probe is under way (at most `PROBE_TIMEOUT` and
        a little more)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(PROBE_TIMEOUT + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            try:
                self.probe()
            except Exception as exc:  # a probe must never end the thread
                logger.debug("stage %s: broker probe: %s", self.stage, exc)

    def probe(self) -> None:
        """One probe (what the thread does every `PROBE_INTERVAL` seconds)."""
        assigned = list(self.assigned())
        if not assigned:
            return  # without partitions the stage is not ready anyway
        try:
            self.consumer.watermarks(min(assigned), timeout=PROBE_TIMEOUT)
        except ProcessorError as exc:
            if self.health.broker_ok:
                logger.warning("stage %s: broker not answering (%s): not ready",
                               self.stage, exc)
            self.health.set_broker_ok(False)
            return
        self.health.set_broker_ok(True)
