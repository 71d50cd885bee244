"""The Kafka ACLs a stage needs, and how `processor acls show` prints them.

`stage_acls(settings, principal)` lists the least a stage's principal must be allowed,
from the settings `processor run` reads (its topics, group, guarantee and
`transactional_id`); `pipeline_acls` does the same for several stages at once, each
binding once. The command itself (`processor acls show | apply`) is `processor.cli.acls`;
applying them through the admin API is `KafkaAdmin.create_acls`.

Kafka's rules, checked on a broker with the StandardAuthorizer (Kafka 4.1):

* READ and WRITE each imply DESCRIBE on the same resource, so no DESCRIBE is listed:
  a stage that may read its input topic also sees it in the metadata;
* consuming needs READ on each input topic (`input_topic` may name several, with commas)
  and on the consumer group (joining the group and committing offsets, in a transaction
  too);
* producing needs WRITE on each topic written: the output topic, each named output and
  the dead-letter topic;
* an exactly-once producer needs WRITE on its transactional id. Each worker process
  takes `<base>-<replica>-<slot>` (`processor.runtime.runner.claim_transactional_id`),
  `<base>` being `transactional_id`, by default `<name>-<group>`: one PREFIXED binding
  on `<base>` covers every replica and process of the stage;
* the idempotent producer (every stage's, by default) needs IDEMPOTENT_WRITE on the
  cluster only when it may write no topic and has no transactional id: WRITE on any
  topic, or on a transactional id, implies it (KIP-679). Only a sink stage without a
  dead-letter topic, at-least-once, gets it;
* `create_topics` needs CREATE: on each of the stage's topics (LITERAL), which is enough
  to create them.

Nothing here talks to Kafka or imports a Kafka client: a binding is plain text, with the
names of Kafka's own enums (`TOPIC`, `READ`, `PREFIXED`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from processor.core.errors import ConfigError
from processor.core.options import EXACTLY_ONCE, StageOptions

ResourceKind = Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"]
Pattern = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "CREATE", "DESCRIBE", "IDEMPOTENT_WRITE"]

CLUSTER_NAME: Final = "kafka-cluster"
"""The one name of the CLUSTER resource."""
ANY_HOST: Final = "*"

_RESOURCE_FLAGS: Final[Mapping[str, str]] = {
    "TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id",
    "CLUSTER": "--cluster"}
_OPERATION_WORDS: Final[Mapping[str, str]] = {
    "READ": "Read", "WRITE": "Write", "CREATE": "Create", "DESCRIBE": "Describe",
    "IDEMPOTENT_WRITE": "IdempotentWrite"}


@dataclass(frozen=True)
class Acl:
    """One ALLOW binding: `principal` may do `operation` on the resource `kind` named
    `name` (matched as `pattern`), from `host`. `why` is the reason, for people."""

    kind: ResourceKind
    name: str
    operation: Operation
    principal: str
    pattern: Pattern = "LITERAL"
    host: str = ANY_HOST
    why: str = dataclasses.field(default="", compare=False)

    @property
    def resource(self) -> str:
        """`topic orders.raw`, `transactional id validate-validate (prefix)`, ..."""
        words = self.kind.lower().replace("_", " ")
        if self.kind == "CLUSTER":
            return "the cluster"
        return f"{words} {self.name}{' (prefix)' if self.pattern == 'PREFIXED' else ''}"

    def __str__(self) -> str:
        return f"{self.operation} on {self.resource} for {self.principal}"

    def to_json(self) -> dict[str, str]:
        return {"principal": self.principal, "host": self.host, "permission": "ALLOW",
                "operation": self.operation, "resource_type": self.kind,
                "resource_name": self.name, "pattern_type": self.pattern, "why": self.why}


class StageLike(Protocol):
    """What `stage_acls` reads of a stage's settings (`processor.ops.settings.StageConfig`
    has it)."""

    @property
    def options(self) -> StageOptions: ...
    @property
    def kafka(self) -> Mapping[str, object]: ...
    @property
    def create_topics(self) -> bool: ...


def principal_of(text: str | None, kafka: Mapping[str, object] | None = None) -> str:
    """`text` as a principal (`orders` is `User:orders`), or, without it, `User:` and the
    `sasl.username` of the settings `kafka`; ConfigError when there is neither."""
    if text is None or not text.strip():
        user = (kafka or {}).get("sasl.username")
        if user is None or not str(user).strip():
            raise ConfigError("--principal is required (User:NAME), unless the stage's "
                              "kafka settings name its sasl.username")
        text = str(user)
    text = text.strip()
    kind, colon, name = text.partition(":")
    if not colon:
        return f"User:{text}"
    if not kind or not name:
        raise ConfigError(f"--principal {text!r}: write it TYPE:NAME, such as User:orders")
    return text


def base_transactional_id(options: StageOptions) -> str:
    """The part of a worker's transactional id common to all of a stage's workers."""
    return options.transactional_id or f"{options.name}-{options.group}"


def stage_acls(stage: StageLike, principal: str) -> list[Acl]:
    """The bindings `stage` needs, running as `principal` (see the module docstring)."""
    options = stage.options

    def allow(kind: ResourceKind, name: str, operation: Operation, why: str,
              pattern: Pattern = "LITERAL") -> Acl:
        return Acl(kind, name, operation, principal, pattern, why=why)

    bindings = [allow("TOPIC", topic, "READ", "consume the input topic")
                for topic in dict.fromkeys(options.input_topics)]
    bindings.append(allow("GROUP", options.group, "READ",
                          "join the consumer group, commit offsets"))
    written: dict[str, str] = {}
    if options.output_topic is not None:
        written[options.output_topic] = "produce to the output topic"
    for route, topic in options.outputs.items():
        written.setdefault(topic, f"produce to the named output {route}")
    if options.dlq_topic is not None:
        written.setdefault(options.dlq_topic, "dead-letter what cannot be processed")
    bindings += [allow("TOPIC", topic, "WRITE", why) for topic, why in written.items()]
    if options.guarantee == EXACTLY_ONCE:
        base = base_transactional_id(options)
        bindings.append(allow("TRANSACTIONAL_ID", base, "WRITE",
                              f"exactly-once: the workers' transactional ids {base}-"
                              "<replica>-<slot>", "PREFIXED"))
    elif not written and _idempotent(stage.kafka):
        bindings.append(allow("CLUSTER", CLUSTER_NAME, "IDEMPOTENT_WRITE",
                              "the idempotent producer of a stage that may write no topic"))
    if stage.create_topics:
        topics = [*options.input_topics, *written]
        bindings += [allow("TOPIC", topic, "CREATE", "create_topics: create it if missing")
                     for topic in dict.fromkeys(topics)]
    return bindings


def _idempotent(kafka: Mapping[str, object]) -> bool:
    value = kafka.get("enable.idempotence", True)
    return str(value).strip().lower() not in ("false", "0", "no", "off")


def pipeline_acls(stages: Iterable[StageLike], principal: str) -> list[Acl]:
    """The bindings of several stages (a pipeline's) running as one principal, each
    binding once, in the order they first appear."""
    found: dict[Acl, Acl] = {}
    for stage in stages:
        for acl in stage_acls(stage, principal):
            found.setdefault(acl, acl)
    return list(found)


# --- rendering ---------------------------------------------------------------------------


def kafka_acls_command(acl: Acl, bootstrap_servers: str, *,
                       command_config: str | None = None) -> str:
    """The `kafka-acls.sh` command line that adds `acl`, with its reason as a comment."""
    words = ["kafka-acls.sh", "--bootstrap-server", bootstrap_servers]
    if command_config:
        words += ["--command-config", command_config]
    words += ["--add", "--allow-principal", acl.principal]
    if acl.host != ANY_HOST:
        words += ["--allow-host", acl.host]
    words += ["--operation", _OPERATION_WORDS[acl.operation], _RESOURCE_FLAGS[acl.kind]]
    if acl.kind != "CLUSTER":
        words.append(acl.name)
    if acl.pattern != "LITERAL":
        words += ["--resource-pattern-type", acl.pattern.lower()]
    line = " ".join(shlex.quote(word) for word in words)
    return f"{line}  # {acl.why}" if acl.why else line


def format_kafka_acls(bindings: Sequence[Acl], bootstrap_servers: str, *,
                      command_config: str | None = None) -> str:
    """One `kafka-acls.sh` line per binding: a shell script Kafka's own tool runs."""
    header = ("# the ACLs of the stage; run as a principal that may alter ACLs (a secured "
              "cluster: --command-config FILE of Java client settings)")
    lines = [kafka_acls_command(acl, bootstrap_servers, command_config=command_config)
             for acl in bindings]
    return "\n".join([header, *lines]) + "\n"


def format_json(bindings: Sequence[Acl]) -> str:
    return json.dumps([acl.to_json() for acl in bindings], indent=2) + "\n"
