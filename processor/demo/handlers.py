"""The demo's three handlers: ordinary handlers over orders, usable on Kafka as well.

The input is a stream of orders: JSON objects
`{"order": str, "customer": str, "amount": number, "currency": str}`.

* `validate` rejects what is not such an object (`InvalidArtifact`: dead-lettered).
* `transform` normalises: amount to integer cents, currency upper case; drops
  zero-amount orders (a filter).
* `enrich` adds typed metadata: a size tier and whether the order needs review.

They depend on `core` only. They are plain functions: the names `validate`, `transform`
and `enrich` reach the handler registry as entry points of the group `processor.handlers`
(declared in `pyproject.toml`), so `--handler validate` loads this module when a stage
first asks for it and not before.
"""

from __future__ import annotations

import json
from typing import Any

from processor.core.artifact import Artifact, MediaType, State
from processor.core.errors import InvalidArtifact


def validate(artifact: Artifact) -> Artifact:
    """Reject anything that is not an order object."""
    try:
        order = json.loads(artifact.payload)
    except ValueError as exc:
        raise InvalidArtifact(f"payload is not JSON: {exc}") from exc
    if not isinstance(order, dict):
        raise InvalidArtifact("payload must be a JSON object")
    missing = [f for f in ("order", "customer", "amount", "currency") if f not in order]
    if missing:
        raise InvalidArtifact(f"order is missing {', '.join(missing)}")
    amount = order["amount"]
    if not isinstance(amount, int | float) or isinstance(amount, bool) or amount < 0:
        raise InvalidArtifact(f"amount must be a number >= 0, not {amount!r}")
    return artifact.with_state(State.VALIDATED).with_meta("validated", True)


def transform(artifact: Artifact) -> Artifact | None:
    """Normalise amounts to cents and currencies to upper case; drop empty orders."""
    order: dict[str, Any] = json.loads(artifact.payload)
    cents = round(float(order.pop("amount")) * 100)
    if cents == 0:
        return None
    order["amount_cents"] = cents
    order["currency"] = str(order["currency"]).upper()
    payload = json.dumps(order, separators=(",", ":"), sort_keys=True)
    return artifact.with_payload(payload, MediaType.JSON).with_state(State.TRANSFORMED)


def enrich(artifact: Artifact) -> Artifact:
    """Add a size tier and a review flag as typed metadata."""
    order = json.loads(artifact.payload)
    cents = int(order["amount_cents"])
    tier = "small" if cents < 10_000 else "medium" if cents < 100_000 else "large"
    return (
        artifact.with_state(State.ENRICHED)
        .with_meta(tier=tier, review=cents >= 500_000, amount_cents=cents)
        .with_origin(artifact.origin or "demo")
    )
