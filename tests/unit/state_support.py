"""Helpers for the state tests: a counting handler and the counts a stage's stores hold."""

from __future__ import annotations

from processor import Artifact, KeyState, stateful
from processor.core.handlers import Outcome
from processor.runtime.stage import Stage
from processor.state.values import decode_value, parse_state_key


@stateful
def count(artifact: Artifact, state: KeyState) -> Outcome:
    """Count the records of each key; the output carries the count."""
    n = state.get("count", 0) + 1
    state.set("count", n)
    return artifact.with_meta("count", n)


def counts(stage: Stage) -> dict[bytes, int]:
    """Key -> count in the committed stores of `stage`'s assigned partitions."""
    assert stage.state is not None
    out: dict[bytes, int] = {}
    for part in stage.state.partitions.values():
        for key, raw in part.store.items():
            parsed = parse_state_key(key)
            if parsed is not None and parsed[0] is not None and parsed[1] == "count":
                out[parsed[0]] = int(decode_value(raw))
    return out
