"""How a stage stops when it must: the errors its loop raises."""

from __future__ import annotations

from processor.core.errors import ProcessorError


class StageFailed(ProcessorError):
    """The stage stopped on an error its policy does not absorb; nothing was committed past it."""


class PolicyStop(StageFailed):
    """The stage stops because a policy says so (too large a share of dead letters,
    too many stuck handler calls), not because a record failed: every record it finished
    is sound, so it stops gracefully (drains and commits) and then raises this."""
