"""The pipeline as a graph: the edges that follow from the topics, cycles, and Mermaid.

Nothing in a pipeline file draws an edge: a stage reads its `input_topic`s and writes its
`output_topic`, its named `outputs` and its `dlq_topic`, so a topic joins every stage that
writes it to every stage that reads it. `flow(pipeline)` works them out (`Flow`): the
edges (topic -> stage for a read, stage -> topic for a write, by kind), the topics, which
of them take dead letters, and the cycles, each with the stage that closes it.

A cycle is declared when one of its stages says it closes it on purpose (`ring: true` or
`max_hops`). The undeclared ones are found on the graph without the outgoing edges of
the declaring stages: a depth-first search from the stages the outside feeds, then the
others in file order; each edge back to a stage on the search's path closes a cycle, and
its writer is the stage that closes it. With every cycle through a declaring stage, that
graph has no cycle left.

`mermaid(flow)` draws it as a Mermaid flowchart (left to right): stages as boxes (with
their handler chain when it is not just the stage's name), topics as cylinders, pipeline
inputs in green, dead-letter topics and their edges dashed, a ring's closing edge thick
and labelled `ring` (with its `max_hops`) and the stage closing it bold, an undeclared
cycle's closing edge thick, red and labelled `cycle (undeclared)`, and a topic that
`topics` does not declare in red.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from processor.pipeline.load import Pipeline, Place

__all__ = ["Cycle", "Edge", "Flow", "flow", "mermaid"]

EdgeKind = Literal["reads", "output", "route", "dead-letter"]
WRITES: Final[tuple[EdgeKind, ...]] = ("output", "route", "dead-letter")


@dataclass(frozen=True, slots=True)
class Edge:
    """A stage reading a topic (`reads`: topic -> stage), or writing one (stage -> topic):
    its output topic, a named output (`route`, named by `route`) or its dead letters."""

    stage: str
    topic: str
    kind: EdgeKind
    place: Place
    """Where the file says so (`stages.x.output_topic`, or `defaults.dlq_topic`)."""
    route: str | None = None

    @property
    def writes(self) -> bool:
        return self.kind != "reads"


@dataclass(frozen=True, slots=True)
class Cycle:
    """Stages whose outputs come back to the first of them: `stages` in the order the
    records go, the last one (`closing`) writing `topic`, which the first one reads."""

    stages: tuple[str, ...]
    topic: str
    declared: bool

    @property
    def closing(self) -> str:
        return self.stages[-1]

    def __str__(self) -> str:
        return " -> ".join((*self.stages, self.stages[0]))


@dataclass(frozen=True)
class Flow:
    """The graph of a pipeline (see the module documentation)."""

    pipeline: Pipeline
    edges: tuple[Edge, ...]
    topics: tuple[str, ...]
    """Every topic: the declared ones in file order, then those only the stages name."""
    cycles: tuple[Cycle, ...]

    def writers(self, topic: str) -> list[Edge]:
        """The edges of the stages that write `topic`."""
        return [e for e in self.edges if e.writes and e.topic == topic]

    def readers(self, topic: str) -> list[str]:
        """The stages that read `topic`."""
        return [e.stage for e in self.edges if e.kind == "reads" and e.topic == topic]

    @property
    def dead_letter_topics(self) -> frozenset[str]:
        return frozenset(e.topic for e in self.edges if e.kind == "dead-letter")

    @property
    def inputs(self) -> tuple[str, ...]:
        """The topics the outside writes: declared `input: true`."""
        return tuple(name for name, spec in self.pipeline.topics.items() if spec.input)

    def closing_edges(self) -> dict[tuple[str, str], Cycle]:
        """(stage, topic) -> the cycle that write closes."""
        return {(c.closing, c.topic): c for c in self.cycles}


def _edges(pipeline: Pipeline) -> Iterator[Edge]:
    for name, plan in pipeline.stages.items():
        options = plan.options
        for topic in options.input_topics:  # several: a fan-in
            yield Edge(name, topic, "reads", pipeline.setting_place(name, "input_topic"))
        if options.output_topic is not None:
            yield Edge(name, options.output_topic, "output",
                       pipeline.setting_place(name, "output_topic"))
        for route, topic in options.outputs.items():
            yield Edge(name, topic, "route", ("stages", name, "outputs", route), route)
        if options.dlq_topic is not None:
            yield Edge(name, options.dlq_topic, "dead-letter",
                       pipeline.setting_place(name, "dlq_topic"))


Successors = Mapping[str, list[tuple[str, str]]]


def _successors(edges: tuple[Edge, ...], stages: list[str],
                skip: frozenset[str] = frozenset()) -> dict[str, list[tuple[str, str]]]:
    """stage -> [(topic, stage reading it)], for every write of a stage not in `skip`."""
    readers: dict[str, list[str]] = {}
    for e in edges:
        if e.kind == "reads":
            readers.setdefault(e.topic, []).append(e.stage)
    succ: dict[str, list[tuple[str, str]]] = {s: [] for s in stages}
    for e in edges:
        if e.writes and e.stage not in skip:
            succ[e.stage].extend((e.topic, r) for r in readers.get(e.topic, ()))
    return succ


def _back_edges(roots: list[str], succ: Successors) -> list[Cycle]:
    """The cycles closed by the edges back to the path of a depth-first search."""
    on_path: set[str] = set()
    done: set[str] = set()
    found: list[Cycle] = []
    for root in roots:
        if root in done:
            continue
        path = [root]
        on_path.add(root)
        stack = [iter(succ[root])]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            topic, child = step
            if child in on_path:
                found.append(Cycle((*path[path.index(child):],), topic, declared=False))
            elif child not in done:
                path.append(child)
                on_path.add(child)
                stack.append(iter(succ[child]))
    return found


def _path(succ: Successors, start: str, goal: str) -> tuple[str, ...] | None:
    """The shortest chain of stages from `start` to `goal` (breadth first)."""
    came: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        if node == goal:
            chain = [node]
            while (prev := came[chain[-1]]) is not None:
                chain.append(prev)
            return tuple(reversed(chain))
        for _, child in succ[node]:
            if child not in came:
                came[child] = node
                queue.append(child)
    return None


def flow(pipeline: Pipeline) -> Flow:
    """The graph of `pipeline`'s valid stages."""
    edges = tuple(_edges(pipeline))
    stages = list(pipeline.stages)
    topics = list(pipeline.topics)
    for e in edges:
        if e.topic not in topics:
            topics.append(e.topic)
    written = {e.topic for e in edges if e.writes}
    fed = [e.stage for e in edges if e.kind == "reads" and e.topic not in written]
    roots = list(dict.fromkeys([*fed, *stages]))
    ring = frozenset(name for name, plan in pipeline.stages.items() if plan.closes_ring)
    undeclared = _back_edges(roots, _successors(edges, stages, skip=ring))
    declared: list[Cycle] = []
    succ = _successors(edges, stages)
    for name in stages:
        if name not in ring:
            continue
        for topic, reader in succ[name]:
            back = _path(succ, reader, name)
            if back is not None:
                declared.append(Cycle(back, topic, declared=True))
    return Flow(pipeline, edges, tuple(topics), (*undeclared, *declared))


# --- Mermaid --------------------------------------------------------------------------------

_STYLES: Final = """\
  classDef stage fill:#eef3ff,stroke:#3b5b9d,color:#111
  classDef topic fill:#ffffff,stroke:#777777,color:#111
  classDef input fill:#eaf7ea,stroke:#2f7d32,color:#111
  classDef dlq fill:#fff6f6,stroke:#b04040,stroke-dasharray:5 5,color:#111
  classDef undeclared fill:#ffecec,stroke:#d00000,stroke-width:2px,color:#111
  classDef ring stroke-width:3px"""


def _ids(prefix: str, names: list[str]) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = prefix + re.sub(r"[^A-Za-z0-9_]", "_", name)
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        ids[name] = candidate
    return ids


def _label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(graph: Flow) -> str:
    """The pipeline as a Mermaid flowchart (see the module documentation)."""
    pipeline = graph.pipeline
    stage_id = _ids("s_", list(pipeline.stages))
    topic_id = _ids("t_", list(graph.topics))
    dlq = graph.dead_letter_topics
    title = pipeline.name or pipeline.source
    lines = ["flowchart LR",
             f"  %% {title}: {len(pipeline.stages)} stages, {len(graph.topics)} topics, "
             f"{len(graph.edges)} edges"]
    for topic in graph.topics:
        lines.append(f"  {topic_id[topic]}[({_label(topic)})]")
    for name, plan in pipeline.stages.items():
        handlers = list(plan.settings.handlers)
        text = name if handlers == [name] else f"{name}<br/>{' → '.join(handlers)}"
        lines.append(f"  {stage_id[name]}[{_label(text)}]")
    closing = graph.closing_edges()
    red: list[int] = []
    for index, e in enumerate(graph.edges):
        s, t = stage_id[e.stage], topic_id[e.topic]
        cycle = closing.get((e.stage, e.topic)) if e.writes else None
        if e.kind == "reads":
            lines.append(f"  {t} --> {s}")
        elif cycle is not None:
            hops = pipeline.stages[e.stage].spec.max_hops
            text = ("ring" + (f", max {hops} hops" if hops else "")) if cycle.declared \
                else "cycle (undeclared)"
            if e.route:
                text = f"{e.route}: {text}"
            lines.append(f"  {s} ==>|{_label(text)}| {t}")
            if not cycle.declared:
                red.append(index)
        elif e.kind == "dead-letter":
            lines.append(f"  {s} -.->|{_label('dead letters')}| {t}")
        elif e.kind == "route":
            lines.append(f"  {s} -->|{_label(e.route or '')}| {t}")
        else:
            lines.append(f"  {s} --> {t}")
    lines.append(_STYLES)
    if stage_id:
        lines.append(f"  class {','.join(stage_id.values())} stage")
    groups: dict[str, list[str]] = {"topic": [], "input": [], "dlq": [], "undeclared": []}
    for topic in graph.topics:
        spec = pipeline.topics.get(topic)
        kind = "undeclared" if spec is None else "input" if spec.input else \
            "dlq" if topic in dlq else "topic"
        groups[kind].append(topic_id[topic])
    for kind, ids in groups.items():
        if ids:
            lines.append(f"  class {','.join(ids)} {kind}")
    rings = sorted({stage_id[c.closing] for c in graph.cycles if c.declared})
    if rings:
        lines.append(f"  class {','.join(rings)} ring")
    for index in red:
        lines.append(f"  linkStyle {index} stroke:#d00000,stroke-width:3px")
    return "\n".join(lines) + "\n"
