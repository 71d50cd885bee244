"""Handlers used by the fault tests (loaded by `processor run` as `tests.faults.handlers:NAME`)."""

from __future__ import annotations

import os
import time

from processor.core.artifact import Artifact
from processor.core.errors import InvalidArtifact

REJECT_EVERY = 100
"""`slow_reject` dead-letters the artifacts whose `seq` is a multiple of this."""


def slow_reject(artifact: Artifact) -> Artifact:
    """About 2 ms of work per artifact; every `REJECT_EVERY`-th one is invalid (dead-lettered).

    Slow enough that a stage is still mid-stream, with handled records not yet committed,
    when a test stops it shortly after a dead letter."""
    time.sleep(0.002)
    if int(artifact.get("seq", 1)) % REJECT_EVERY == 0:
        raise InvalidArtifact("rejected by the test handler")
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)


def slow_hop(artifact: Artifact) -> Artifact:
    """`hop` with about 1 ms of work: a stage is still mid-stream when a fault strikes."""
    time.sleep(0.001)
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)


def hang_on_marked(artifact: Artifact) -> Artifact:
    """Hangs for ever on an artifact whose meta has `hang`; passes the others on."""
    if artifact.get("hang"):
        while True:
            time.sleep(3600)
    return artifact


def wrong_type(artifact: Artifact) -> object:
    """Returns something that is not a handler outcome for artifacts marked `wrong`."""
    if artifact.get("wrong"):
        return {"not": "an artifact"}
    return artifact


_HOARD: list[bytes] = []


def hoard_memory(artifact: Artifact) -> Artifact:
    """Keeps 1 MiB per artifact marked `grow` for ever: a handler leaking memory."""
    if artifact.get("grow"):
        _HOARD.append(os.urandom(1 << 20))
    return artifact
