"""What bringing a pipeline's topics up would do on a cluster, found without changing it.

`plan_topics(pipeline, admin)` compares every topic of the file with the cluster, through
the backend's `Admin` (`list_topics`, `describe_topic`), and returns one `TopicPlan` per
topic, in file order:

* `+` the topic is missing: it would be created with the file's partitions, replication
  and settings;
* `~` it exists with fewer partitions than the file says, or a setting of the file
  (`retention.ms`, ...) differs from the topic's own: partitions would be added, the
  setting changed;
* `=` it is as the file says;
* `!` what no tool would change in place: more partitions than the file says (Kafka does
  not remove partitions) or another replication factor (that takes a reassignment).

Settings the topic has and the file does not name are left alone, as the cluster's
defaults are. `lines()` prints it as a diff (`processor pipeline plan`);
`create_missing(plans, admin)` creates the `+` topics (`processor pipeline up`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from processor.backends.abstract import Admin
from processor.pipeline.load import Pipeline
from processor.pipeline.model import TopicSpec

__all__ = ["TopicPlan", "create_missing", "plan_lines", "plan_summary", "plan_topics"]

Action = Literal["create", "change", "same"]


def _value(value: object) -> str:
    """A topic setting as Kafka reports it (`true`, `604800000`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class TopicPlan:
    """One topic: what would be done to it, and what could not be."""

    name: str
    action: Action
    spec: TopicSpec
    changes: tuple[str, ...] = ()
    """`partitions 3 -> 6`, `retention.ms 86400000 -> 604800000`."""
    conflicts: tuple[str, ...] = field(default=())
    """What differs but would not be changed in place."""

    def lines(self) -> list[str]:
        if self.action == "create":
            spec = self.spec
            parts = [f"{spec.partitions} partitions" if spec.partitions is not None
                     else "the cluster's partitions",
                     f"replication {spec.replication}" if spec.replication is not None
                     else "the cluster's replication"]
            parts += [f"{k}={_value(v)}" for k, v in spec.config.items()]
            out = [f"+ topic {self.name} ({', '.join(parts)})"]
        elif self.action == "change":
            out = [f"~ topic {self.name}: {', '.join(self.changes)}"]
        else:
            out = [f"= topic {self.name}"]
        out += [f"! topic {self.name}: {conflict}" for conflict in self.conflicts]
        return out


def plan_topics(pipeline: Pipeline, admin: Admin) -> list[TopicPlan]:
    """Every topic of `pipeline` against the cluster of `admin`; nothing is changed."""
    existing = admin.list_topics()
    plans: list[TopicPlan] = []
    for name, spec in pipeline.topics.items():
        if name not in existing:
            plans.append(TopicPlan(name, "create", spec))
            continue
        found = admin.describe_topic(name)
        changes: list[str] = []
        conflicts: list[str] = []
        count = len(found.partitions)
        if spec.partitions is not None and count < spec.partitions:
            changes.append(f"partitions {count} -> {spec.partitions}")
        elif spec.partitions is not None and count > spec.partitions:
            conflicts.append(f"{count} partitions, the file says {spec.partitions}: Kafka "
                             "does not remove partitions")
        if spec.replication is not None and found.replication != spec.replication:
            conflicts.append(f"replication {found.replication}, the file says "
                             f"{spec.replication}: changing it takes a partition "
                             "reassignment")
        for key, wanted in spec.config.items():
            have = found.config.get(key)
            if have != _value(wanted):
                was = have if have is not None else "(cluster default)"
                changes.append(f"{key} {was} -> {_value(wanted)}")
        plans.append(TopicPlan(name, "change" if changes else "same", spec,
                               tuple(changes), tuple(conflicts)))
    return plans


def plan_lines(plans: Sequence[TopicPlan]) -> list[str]:
    """The plan as a diff, a line a change."""
    return [line for plan in plans for line in plan.lines()]


def plan_summary(plans: Sequence[TopicPlan], source: str = "") -> str:
    """`demo.yaml: 1 to create, 1 to change, 3 unchanged`."""
    counts: Mapping[Action, int] = {a: sum(p.action == a for p in plans)
                                    for a in ("create", "change", "same")}
    text = (f"{counts['create']} to create, {counts['change']} to change, "
            f"{counts['same']} unchanged")
    conflicts = sum(bool(p.conflicts) for p in plans)
    if conflicts:
        text += f"; {conflicts} with differences left as they are (!)"
    return f"{source}: {text}" if source else text


def create_missing(plans: Sequence[TopicPlan], admin: Admin) -> list[TopicPlan]:
    """Create the topics `plans` finds missing (`+`), with the file's partitions,
    replication and settings; the others are left as they are. Returns those created."""
    created = []
    for plan in plans:
        if plan.action != "create":
            continue
        spec = plan.spec
        admin.create_topic(plan.name, spec.partitions, spec.replication,
                           {k: _value(v) for k, v in spec.config.items()})
        created.append(plan)
    return created
