"""`processor pipeline check`: every problem of a pipeline file, each at its place.

`check_pipeline(pipeline)` adds to the problems of reading the file (YAML, unknown keys,
settings that do not validate; `processor.pipeline.load`) what only the whole pipeline
shows:

* a stage reads a topic that no stage writes and that `topics` does not declare a
  pipeline input (`input: true`);
* a stage writes (its output, a named output, its dead letters) to a topic that `topics`
  does not declare;
* a cycle that no stage of it declares (`ring: true` or `max_hops`), named at the stage
  that closes it;
* a handler that does not resolve the way the stage resolves it (the handler registry:
  registered names, entry points, `module:function`), a built-in security handler
  (`sign`, `verify`, `seal`, `open`) without the key setting it needs, or an async or
  batch handler in a chain;
* a stage that requires signatures (`require_signature`, `require_approvals`) without
  trusted keys, or fed by a writer that does not sign (`sign_key`), by dead letters, or
  by a pipeline input not declared `signed: true`;
* a stage that opens sealed payloads (`open_key`, or the `open` handler) that nothing
  feeding it seals (`seal_recipients`, or an input declared `sealed: true`);
* two stages in one consumer group.

While a stage's own entry is invalid, the checks of what feeds what are skipped (that
stage may be the missing writer), and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from processor.core.errors import ConfigError, HandlerNotFound
from processor.core.handlers import Handler, chain, registry
from processor.pipeline.graph import Edge, Flow, flow
from processor.pipeline.load import Pipeline, Place, Problem
from processor.security.handlers import KeyedHandler

__all__ = ["Report", "check_pipeline"]

_KEYED_NEEDS: Final = {"sign": ("sign_key",), "verify": ("trust_store", "trusted_keys"),
                       "seal": ("seal_recipients",), "open": ("open_key",)}
"""Built-in security handler -> the settings that give it its keys (any one will do)."""


@dataclass(frozen=True)
class Report:
    """What `check_pipeline` found."""

    pipeline: Pipeline
    flow: Flow
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the size of the pipeline, and whether it has problems."""
        p = self.pipeline
        size = (f"{len(p.stages)} stages, {len(self.flow.topics)} topics, "
                f"{len(self.flow.edges)} edges")
        if self.ok:
            return f"{p.source}: {size}; no problems"
        return f"{p.source}: {len(self.problems)} problem(s) ({size} valid)"

    def lines(self) -> list[str]:
        """Every problem as `FILE:LINE: place: message`, then the notes."""
        return [p.render(self.pipeline.source) for p in self.problems] + [
            f"{self.pipeline.source}: note: {n}" for n in self.notes]


def _what(edge: Edge) -> str:
    return {"output": "its output", "route": f"its output {edge.route!r}",
            "dead-letter": "its dead letters"}.get(edge.kind, "")


def _topics(p: Pipeline, graph: Flow) -> Iterator[Problem]:
    for e in graph.edges:
        if e.writes and e.topic not in p.topics:
            yield p.problem(e.place, f"stage {e.stage} writes {_what(e)} to {e.topic}, which "
                                     f"topics does not declare: add it to topics")


def _feeding(p: Pipeline, graph: Flow) -> Iterator[Problem]:
    for e in graph.edges:
        if e.kind != "reads" or graph.writers(e.topic):
            continue
        spec = p.topics.get(e.topic)
        if spec is None:
            yield p.problem(e.place, f"stage {e.stage} reads {e.topic}, which no stage writes "
                                     "and topics does not declare: declare it in topics "
                                     "with input: true if the outside writes it")
        elif not spec.input:
            yield p.problem(e.place, f"stage {e.stage} reads {e.topic}, which no stage "
                                     "writes and which is not a pipeline input: set input: "
                                     f"true on topics.{e.topic} if the outside writes it")


def _cycles(p: Pipeline, graph: Flow) -> Iterator[Problem]:
    for cycle in graph.cycles:
        if not cycle.declared:
            yield p.problem(("stages", cycle.closing), (
                f"closes the cycle {cycle} (writing {cycle.topic}), which no stage of it "
                f"declares: if records are meant to go round, set ring: true (or max_hops: "
                f"N) on stage {cycle.closing}"))


def _handlers(p: Pipeline) -> Iterator[Problem]:
    for name, plan in p.stages.items():
        place = p.setting_place(name, "handlers")
        settings = plan.settings
        resolved: list[Handler] = []
        for index, ref in enumerate(settings.handlers):
            at: Place = (*place, index) if place[-1] == "handlers" else place
            try:
                handler = registry.resolve(ref)
            except HandlerNotFound as exc:
                yield p.problem(at, f"stage {name}: {exc}")
                continue
            except Exception as exc:  # importing user code may raise anything
                yield p.problem(at, f"stage {name}: handler {ref!r} does not import: "
                                    f"{type(exc).__name__}: {exc}")
                continue
            resolved.append(handler)
            needs = _KEYED_NEEDS.get(getattr(handler, "__name__", ""))
            if isinstance(handler, KeyedHandler) and needs and not any(
                    getattr(settings, key) for key in needs):
                yield p.problem(at, f"stage {name}: handler {ref!r} needs {handler.needs}")
        if len(resolved) == len(settings.handlers) > 1:
            try:
                chain(*resolved)
            except ConfigError as exc:
                yield p.problem(place, f"stage {name}: {exc}")


def _writers_text(edges: Sequence[Edge]) -> str:
    return ", ".join(f"stage {e.stage}" + (" (dead letters)" if e.kind == "dead-letter"
                                           else "") for e in edges)


def _signatures(p: Pipeline, graph: Flow) -> Iterator[Problem]:
    for name, plan in p.stages.items():
        s = plan.settings
        if not (s.require_signature or s.require_approvals):
            continue
        key = "require_signature" if s.require_signature else "require_approvals"
        place = p.setting_place(name, key)
        if not (s.trust_store or s.trusted_keys):
            yield p.problem(place, f"stage {name} requires signatures but trusts no key: "
                                   "set trust_store or trusted_keys")
        for topic in s.options.input_topics:
            spec = p.topics.get(topic)
            unsigned = [e for e in graph.writers(topic) if e.kind == "dead-letter"
                        or not p.stages[e.stage].settings.sign_key]
            if unsigned:
                yield p.problem(place, (
                    f"stage {name} requires signatures, but {topic} is written without a "
                    f"signature by {_writers_text(unsigned)}: set sign_key there"
                    + (" (dead letters are never signed)" if any(
                        e.kind == "dead-letter" for e in unsigned) else "")
                    + ", or every record they write is dead-lettered (reason signature)"))
            if spec is not None and spec.input and not spec.signed:
                yield p.problem(place, (
                    f"stage {name} requires signatures, but {topic} is a pipeline input not "
                    f"declared signed: set signed: true on topics.{topic} if its outside "
                    "writers sign"))


def _sealing(p: Pipeline, graph: Flow) -> Iterator[Problem]:
    for name, plan in p.stages.items():
        s = plan.settings
        if not (s.open_key or "open" in s.handlers):
            continue
        place = p.setting_place(name, "open_key" if s.open_key else "handlers")
        for topic in s.options.input_topics:
            spec = p.topics.get(topic)
            writers = graph.writers(topic)
            if not writers and (spec is None or not spec.input):
                continue  # nothing feeds it at all: `_feeding` says so
            if spec is not None and spec.sealed:
                continue
            if not any(e.kind != "dead-letter" and p.stages[e.stage].settings.seal_recipients
                       for e in writers):
                yield p.problem(place, (
                    f"stage {name} opens sealed payloads, but nothing that feeds it seals: no "
                    f"writer of {topic} sets seal_recipients"
                    + (f", and topics.{topic} is not declared sealed: true" if spec is not None
                       and spec.input else "")))


def _groups(p: Pipeline) -> Iterator[Problem]:
    first: dict[str, str] = {}
    for name, plan in p.stages.items():
        group = plan.options.group
        if group in first:
            yield p.problem(p.setting_place(name, "group"), (
                f"stage {name} shares consumer group {group} with stage {first[group]}: "
                "they would share one set of partitions and commits; give each stage its "
                "own group"))
        else:
            first[group] = name


def check_pipeline(pipeline: Pipeline, *, handlers: bool = True) -> Report:
    """Every problem of `pipeline` (see the module documentation); `handlers`: resolve
    the handlers too (importing their modules, as a stage does at start)."""
    graph = flow(pipeline)
    found = list(pipeline.problems)
    notes: list[str] = []
    found += _topics(pipeline, graph)
    found += _cycles(pipeline, graph)
    found += _groups(pipeline)
    invalid = [s for s in pipeline.stage_names if s not in pipeline.stages]
    if invalid:
        notes.append(f"what feeds what is not checked while stage(s) {', '.join(invalid)} "
                     "are invalid")
    else:
        found += _feeding(pipeline, graph)
        found += _signatures(pipeline, graph)
        found += _sealing(pipeline, graph)
    if handlers:
        found += _handlers(pipeline)
    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda p: (p.line if p.line is not None else 0, p.place))
    return Report(pipeline, graph, tuple(unique), tuple(notes))
