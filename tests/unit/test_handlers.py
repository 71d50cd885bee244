"""Handler outcomes, chaining, the registry (names, entry points) and the demo handlers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from processor.core.artifact import Artifact, MediaType
from processor.core.errors import HandlerNotFound, InvalidArtifact
from processor.core.handlers import (
    DEFAULT_OUTPUT,
    HANDLER_ENTRY_POINTS,
    Outcome,
    Registry,
    Routed,
    chain,
    outcomes,
    registry,
)


def upper(a: Artifact) -> Outcome:
    return a.with_payload(a.payload.upper())


def split(a: Artifact) -> Outcome:
    return [a.with_payload(part) for part in a.payload.split(b",")]


def drop_b(a: Artifact) -> Outcome:
    return None if a.payload == b"B" else a


def test_outcomes_normalise_every_result_shape() -> None:
    a = Artifact.new("x")
    assert outcomes(None) == []
    assert outcomes(a) == [Routed(DEFAULT_OUTPUT, a)]
    assert outcomes(Routed("audit", a)) == [Routed("audit", a)]
    assert outcomes([a, Routed("audit", a)]) == [Routed("", a), Routed("audit", a)]
    with pytest.raises(TypeError, match="expected Artifact or Routed"):
        outcomes(["nope"])  # type: ignore[list-item]


def test_a_chain_fans_out_filters_and_keeps_identity_when_nothing_changed() -> None:
    a = Artifact.new("a,b,c")
    result = chain(split, upper, drop_b)(a)
    assert isinstance(result, list)
    assert [r.artifact.payload for r in result] == [b"A", b"C"]
    assert all(r.output == DEFAULT_OUTPUT for r in result)
    same = chain(lambda x: x, drop_b)
    assert same(a) is a
    assert chain(split, lambda x: None)(a) is None


def test_a_routed_artifact_leaves_the_chain_at_once() -> None:
    seen: list[bytes] = []

    def record(x: Artifact) -> Outcome:
        seen.append(x.payload)
        return x

    a = Artifact.new("r")
    result = chain(lambda x: Routed("side", x), record)(a)
    assert result == [Routed("side", a)]
    assert seen == []


def test_a_chain_refuses_a_result_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="a handler returned int"):
        chain(lambda x: x, lambda x: 3)(Artifact.new("x"))  # type: ignore[arg-type,return-value]


def test_the_registry_resolves_names_and_module_functions() -> None:
    local = Registry()
    local.register("up", upper)
    assert local.resolve("up") is upper
    assert local.resolve("tests.unit.test_handlers:upper") is upper
    with pytest.raises(ValueError, match="registered already"):
        local.register("up", split)
    with pytest.raises(HandlerNotFound, match="no handler named 'nope'"):
        local.resolve("nope")
    with pytest.raises(HandlerNotFound, match="cannot import"):
        local.resolve("no.such.module:f")
    with pytest.raises(HandlerNotFound, match="has no 'missing'"):
        local.resolve("tests.unit.test_handlers:missing")
    with pytest.raises(HandlerNotFound, match="not a callable"):
        local.resolve("processor.core.handlers:DEFAULT_OUTPUT")


GROUP = "processor.tests.handlers"
"""An entry-point group only the fake distribution below declares."""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry over a fake installed distribution that declares two handlers."""
    dist = tmp_path / "fake_handlers-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-handlers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "up = tests.unit.test_handlers:upper\n"
        "broken = tests.unit.no_such_module:handle\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registry(GROUP)


def test_a_name_resolves_through_an_entry_point(plugin: Registry) -> None:
    assert plugin.names() == ["broken", "up"]
    assert plugin.get("up") is None  # declared, not loaded
    assert plugin.resolve("up") is upper
    assert plugin.get("up") is upper  # loaded once, registered from then on
    plugin.register("mine", split)
    assert plugin.names() == ["broken", "mine", "up"]


def test_an_unknown_name_lists_every_known_name(plugin: Registry) -> None:
    plugin.register("mine", split)
    with pytest.raises(HandlerNotFound) as caught:
        plugin.resolve("nope")
    assert str(caught.value) == (
        "no handler named 'nope': use a known name (broken, mine, up) or module:function"
    )


def test_an_entry_point_that_does_not_load_says_which(plugin: Registry) -> None:
    with pytest.raises(HandlerNotFound, match=(
        r"handler 'broken': its entry point 'tests.unit.no_such_module:handle' "
        rf"\(group '{GROUP}'\) does not load"
    )):
        plugin.resolve("broken")


def test_a_registry_without_a_group_knows_only_registered_names(plugin: Registry) -> None:
    local = Registry()
    assert local.names() == []
    with pytest.raises(HandlerNotFound, match=r"use a known name \(none\)"):
        local.resolve("up")


def test_the_demo_handlers_resolve_by_name_without_importing_the_demo_first() -> None:
    """In a fresh interpreter: the registry loads the demo only when a name asks for it."""
    script = (
        "import sys\n"
        "from processor.core.handlers import registry\n"
        "import processor.cli.main, processor.runtime.runner\n"
        "assert not [m for m in sys.modules if m.startswith('processor.demo')], 'imported'\n"
        "names = registry.names()\n"
        "assert 'processor.demo' not in sys.modules, 'names() imported the demo'\n"
        "found = registry.resolve('enrich')\n"
        "from processor.demo.handlers import enrich\n"
        "assert found is enrich\n"
        "print(' '.join(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert {"validate", "transform", "enrich"} <= set(result.stdout.split())
    assert registry.entry_point_group == HANDLER_ENTRY_POINTS


def test_the_demo_handlers() -> None:
    from processor.demo import enrich, transform, validate

    order = Artifact.new(json.dumps({"order": "o1", "customer": "c", "amount": 1234.5,
                                     "currency": "eur"}), media_type=MediaType.JSON)
    checked = validate(order)
    assert checked.get("validated") is True
    moved = transform(checked)
    assert moved is not None
    assert json.loads(moved.payload) == {"order": "o1", "customer": "c",
                                         "amount_cents": 123450, "currency": "EUR"}
    rich = enrich(moved)
    assert rich.get("tier") == "large"
    assert rich.get("review") is False
    zero = validate(Artifact.new(json.dumps({"order": "o", "customer": "c", "amount": 0,
                                             "currency": "eur"})))
    assert transform(zero) is None
    for bad, why in [("nope", "not JSON"), ("[]", "JSON object"),
                     ('{"order": "o"}', "missing customer"),
                     ('{"order":"o","customer":"c","amount":-1,"currency":"x"}', "amount")]:
        with pytest.raises(InvalidArtifact, match=why):
            validate(Artifact.new(bad))
