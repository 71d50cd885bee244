"""Handlers of the example pipelines of other shapes than the demo's chain
(examples/pipelines/graph.yaml, ring.yaml, sink.yaml; docs/pipelines.md, "Shapes").

Each is deterministic: the same input gives the same output, so a pipeline of them gives
the same records on the in-memory test driver as on Kafka. Their input is a JSON object
payload; a stage names one as `examples.shapes:NAME` (run from the repository's root,
whose directory `processor run` imports from).

* graph: `route` sends an event to the named output `orders` or `payments` by its
  `kind` (anything else is dead-lettered), `price` and `settle` mark each branch, `merge`
  joins them (a stage reading both topics);
* ring: `countdown` takes one off `n` and sends the event round again through `relay`
  until `n` reaches 0 (named output `done`); the ring's `max_hops` dead-letters an event
  that would go round too often;
* sink: `normalize` checks and normalises, `archive` keeps nothing downstream (it returns
  None: the stage has no output topic), `export` writes the bare payload.
"""

from __future__ import annotations

import json
from typing import Any

from processor.core.artifact import Artifact, MediaType
from processor.core.errors import InvalidArtifact
from processor.core.handlers import Routed


def _object(artifact: Artifact) -> dict[str, Any]:
    try:
        data = json.loads(artifact.payload)
    except ValueError as exc:
        raise InvalidArtifact(f"payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArtifact("payload must be a JSON object")
    return data


def _payload(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


# --- graph: fan-out through named outputs, fan-in through two input topics ---------------


def route(artifact: Artifact) -> Routed:
    """`{"kind": "order"|"payment", ...}` to the output of that name (plural)."""
    kind = _object(artifact).get("kind")
    if kind not in ("order", "payment"):
        raise InvalidArtifact(f"kind must be order or payment, not {kind!r}")
    return Routed(f"{kind}s", artifact.with_meta(route=f"{kind}s"))


def price(artifact: Artifact) -> Artifact:
    """An order's total in cents."""
    data = _object(artifact)
    cents = int(data.get("quantity", 1)) * int(data.get("unit_cents", 0))
    return artifact.with_meta(total_cents=cents)


def settle(artifact: Artifact) -> Artifact:
    """A payment marked settled."""
    return artifact.with_meta(settled=True)


def merge(artifact: Artifact) -> Artifact:
    """Either branch, in one stream."""
    return artifact.with_meta(merged=True)


# --- ring: a feedback loop, bounded by max_hops -------------------------------------------


def countdown(artifact: Artifact) -> Artifact | Routed:
    """`{"n": N}` with N taken down by one; at 0 to the named output `done`, else round
    again."""
    data = _object(artifact)
    n = int(data.get("n", 0)) - 1
    out = artifact.with_payload(_payload({**data, "n": n}), MediaType.JSON)
    return Routed("done", out) if n <= 0 else out


def relay(artifact: Artifact) -> Artifact:
    """Back to `countdown`, counting the rounds in the metadata."""
    rounds = artifact.get("rounds")
    return artifact.with_meta(rounds=(rounds if isinstance(rounds, int) else 0) + 1)


# --- sink: a stage without an output topic, and one writing plain payloads ----------------


def normalize(artifact: Artifact) -> Artifact:
    """Keys sorted, text trimmed; a payload that is not a JSON object is dead-lettered."""
    data = {key: value.strip() if isinstance(value, str) else value
            for key, value in _object(artifact).items()}
    return artifact.with_payload(_payload(data), MediaType.JSON)


def archive(artifact: Artifact) -> None:
    """The end of the line: nothing goes downstream (counted as dropped)."""
    return None


def export(artifact: Artifact) -> Artifact:
    """The event as it leaves the pipeline (the stage writes the payload alone)."""
    return artifact.with_meta(exported=True)
