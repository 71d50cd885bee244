"""Handlers used by the integration and fault tests (loaded by `processor run`)."""

from __future__ import annotations

from processor.core.artifact import Artifact


def hop(artifact: Artifact) -> Artifact:
    """Count the stages an artifact went through, in its metadata."""
    return artifact.with_meta("hops", artifact.get("hops", 0) + 1)
