"""A handler for the containerised stage tests, mounted into the stage container.

`steady` passes every artifact on after a fixed amount of work, so that a stage holds work in
flight for long enough that a SIGTERM arrives while it is processing.
"""

from __future__ import annotations

import time

from processor.core.artifact import Artifact

WORK_SECONDS = 0.004


def steady(artifact: Artifact) -> Artifact:
    """Pass the artifact on, tagged, after WORK_SECONDS of simulated work."""
    time.sleep(WORK_SECONDS)
    return artifact.with_meta("stage", "steady")
