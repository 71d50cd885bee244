"""The shared transform written as a handler of this project.

Used by `contender_project.py` and, as `project_handler:transform`, by `processor run`
(the 2-process row), with this directory on PYTHONPATH. `passthrough` is the handler of the
pass-through row.
"""

from __future__ import annotations

import time

import workload

from processor.core.artifact import Artifact

FIRST_CALL: list[float] = []
"""Wall-clock time of the first call in this process (when the first record arrived)."""

_KEY = workload.HANDLED_KEY
_STATE = workload.TRANSFORMED_STATE
_clock = time.time_ns


def transform(artifact: Artifact) -> Artifact:
    """Stamp the handling time into the metadata and mark the artifact transformed."""
    if not FIRST_CALL:
        FIRST_CALL.append(time.time())
    return artifact.with_meta(_KEY, _clock() // 1_000_000).with_state(_STATE)


def passthrough(artifact: Artifact) -> Artifact:
    """Return the artifact unchanged: the stage passes the original bytes through."""
    if not FIRST_CALL:
        FIRST_CALL.append(time.time())
    return artifact
