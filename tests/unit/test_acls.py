"""The ACLs a stage needs (`processor.ops.acls`), as `processor acls show` prints them, and
the authorization errors that name what is missing. Against a broker with an authorizer:
tests/integration/test_least_privilege.py."""

from __future__ import annotations

import json
import shlex

import pytest
from confluent_kafka import KafkaError, KafkaException

from processor.backends.kafka.admin import _binding, _key, acl_key
from processor.backends.kafka.errors import denied, raise_kafka
from processor.cli.main import main
from processor.core.errors import ConfigError, NotAuthorized
from processor.ops.acls import (
    Acl,
    format_json,
    format_kafka_acls,
    kafka_acls_command,
    pipeline_acls,
    principal_of,
    stage_acls,
)
from processor.ops.settings import StageConfig, load_config

ORDERS = "User:orders"


def stage(*, output: str | None = "orders.valid", dlq: str | None = "orders.dlq",
          **flags: object) -> StageConfig:
    """A stage's settings as `processor run` reads its flags."""
    given: dict[str, object] = {"bootstrap_servers": "kafka:9093", "handlers": ["validate"],
                                "input_topic": "orders.raw", "group": "validate",
                                "output_topic": output, "dlq_topic": dlq, **flags}
    return load_config(None, {}, given)


def triples(acls: list[Acl]) -> list[tuple[str, str, str, str]]:
    return [(a.kind, a.name, a.operation, a.pattern) for a in acls]


def test_an_at_least_once_stage_reads_its_input_and_group_and_writes_its_outputs() -> None:
    acls = stage_acls(stage(outputs=["audit=orders.audit", "copy=orders.valid"]), ORDERS)
    assert triples(acls) == [
        ("TOPIC", "orders.raw", "READ", "LITERAL"),
        ("GROUP", "validate", "READ", "LITERAL"),
        ("TOPIC", "orders.valid", "WRITE", "LITERAL"),  # once, though two outputs go there
        ("TOPIC", "orders.audit", "WRITE", "LITERAL"),
        ("TOPIC", "orders.dlq", "WRITE", "LITERAL"),
    ]
    assert {a.principal for a in acls} == {ORDERS} and {a.host for a in acls} == {"*"}
    assert all(a.why for a in acls)
    # No DESCRIBE (READ and WRITE imply it), no cluster ACL: WRITE on a topic covers the
    # idempotent producer.
    assert not [a for a in acls if a.operation == "DESCRIBE" or a.kind == "CLUSTER"]


def test_an_exactly_once_stage_writes_its_transactional_ids_by_prefix() -> None:
    acls = stage_acls(stage(guarantee="exactly-once"), ORDERS)
    assert triples(acls)[-1] == ("TRANSACTIONAL_ID", "validate-validate", "WRITE", "PREFIXED")
    assert len(acls) == 5
    named = stage_acls(stage(guarantee="exactly-once", name="check",
                             transactional_id="orders-eos"), ORDERS)
    assert triples(named)[-1] == ("TRANSACTIONAL_ID", "orders-eos", "WRITE", "PREFIXED")
    by_name = stage_acls(stage(guarantee="exactly-once", name="check"), ORDERS)
    assert by_name[-1].name == "check-validate"  # <name>-<group>, as the runner makes it


def test_a_sink_that_writes_nothing_needs_idempotent_write_unless_transactional() -> None:
    sink = stage_acls(stage(output=None, dlq=None), ORDERS)
    assert triples(sink) == [("TOPIC", "orders.raw", "READ", "LITERAL"),
                             ("GROUP", "validate", "READ", "LITERAL"),
                             ("CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE", "LITERAL")]
    assert sink[-1].resource == "the cluster"
    plain = stage_acls(stage(output=None, dlq=None, kafka=["enable.idempotence=false"]),
                       ORDERS)
    assert [a.kind for a in plain] == ["TOPIC", "GROUP"]
    eos = stage_acls(stage(output=None, dlq=None, guarantee="exactly-once"), ORDERS)
    assert [a.kind for a in eos] == ["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
    with_dlq = stage_acls(stage(output=None), ORDERS)
    assert [a.operation for a in with_dlq] == ["READ", "READ", "WRITE"]


def test_a_stage_reading_several_topics_reads_each() -> None:
    acls = stage_acls(stage(input_topic="orders.eu, orders.us"), ORDERS)
    assert triples(acls)[:3] == [("TOPIC", "orders.eu", "READ", "LITERAL"),
                                 ("TOPIC", "orders.us", "READ", "LITERAL"),
                                 ("GROUP", "validate", "READ", "LITERAL")]


def test_create_topics_adds_create_on_each_topic() -> None:
    acls = stage_acls(stage(create_topics=True), ORDERS)
    assert [(a.name, a.operation) for a in acls if a.operation == "CREATE"] == [
        ("orders.raw", "CREATE"), ("orders.valid", "CREATE"), ("orders.dlq", "CREATE")]


def test_a_pipeline_lists_each_binding_once() -> None:
    first = stage(output="orders.valid")
    second = stage(input_topic="orders.valid", output="orders.done", group="finish")
    acls = pipeline_acls([first, second], ORDERS)
    assert len(acls) == len(set(acls)) == 7  # the shared dead-letter topic once
    assert ("TOPIC", "orders.valid", "READ", "LITERAL") in triples(acls)
    assert ("TOPIC", "orders.valid", "WRITE", "LITERAL") in triples(acls)


def test_the_principal_is_given_or_the_stages_sasl_user() -> None:
    assert principal_of("orders") == ORDERS
    assert principal_of("User:orders") == ORDERS
    assert principal_of(" Group:ops ") == "Group:ops"
    assert principal_of(None, {"sasl.username": "billing"}) == "User:billing"
    with pytest.raises(ConfigError, match="--principal is required"):
        principal_of(None, {})
    with pytest.raises(ConfigError, match="TYPE:NAME"):
        principal_of("User:")


def test_kafka_acls_lines_are_what_kafkas_tool_takes() -> None:
    acls = stage_acls(stage(guarantee="exactly-once", outputs=["odd=it's odd"]), ORDERS)
    text = format_kafka_acls(acls, "kafka:9093")
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    assert lines[1] == ("kafka-acls.sh --bootstrap-server kafka:9093 --add --allow-principal "
                        "User:orders --operation Read --topic orders.raw  # consume the "
                        "input topic")
    assert lines[2].split("  #")[0].endswith("--operation Read --group validate")
    assert "--topic 'it'\"'\"'s odd'" in text  # quoted for the shell
    txn = shlex.split(lines[-1], comments=True)
    assert txn[-6:] == ["--operation", "Write", "--transactional-id", "validate-validate",
                        "--resource-pattern-type", "prefixed"]
    cluster = kafka_acls_command(Acl("CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE", ORDERS),
                                 "kafka:9093", command_config="admin.properties")
    assert cluster == ("kafka-acls.sh --bootstrap-server kafka:9093 --command-config "
                       "admin.properties --add --allow-principal User:orders --operation "
                       "IdempotentWrite --cluster")


def test_json_is_a_list_of_bindings() -> None:
    document = json.loads(format_json(stage_acls(stage(), ORDERS)))
    assert document[0] == {"principal": ORDERS, "host": "*", "permission": "ALLOW",
                           "operation": "READ", "resource_type": "TOPIC",
                           "resource_name": "orders.raw", "pattern_type": "LITERAL",
                           "why": "consume the input topic"}


def test_bindings_become_the_admin_apis_and_back() -> None:
    cluster = Acl("CLUSTER", "kafka-cluster", "IDEMPOTENT_WRITE", ORDERS)
    for acl in [*stage_acls(stage(guarantee="exactly-once"), ORDERS), cluster]:
        assert _key(_binding(acl)) == acl_key(acl)


def test_show_reads_the_settings_as_run_does(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCESSOR_GUARANTEE", "exactly-once")
    monkeypatch.setenv("PROCESSOR_KAFKA__SASL_USERNAME", "orders")
    code = main(["acls", "show", "--bootstrap-servers", "kafka:9093", "--input-topic",
                 "orders.raw", "--group", "validate", "--output-topic", "orders.valid"])
    out = capsys.readouterr().out
    assert code == 0
    assert "--allow-principal User:orders" in out  # from the environment's sasl.username
    assert "--transactional-id validate-validate --resource-pattern-type prefixed" in out
    assert main(["acls", "show", "--bootstrap-servers", "kafka:9093", "--group", "g"]) == 1
    assert "input_topic" in capsys.readouterr().err


def test_a_denied_group_or_transactional_id_is_named() -> None:
    group = denied(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), "consume",
                   {KafkaError.GROUP_AUTHORIZATION_FAILED: "group validate"})
    assert str(group).startswith("consume (group validate): not authorized")
    assert "the consumer group (READ)" in str(group)
    with pytest.raises(NotAuthorized, match=r"^init_transactions \(transactional id t-h-0\)"):
        raise_kafka(KafkaException(KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED)),
                    "init_transactions", transactional=True, names={
                        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id t-h-0"})
    # A name is given only to the error about its own resource.
    topic = denied(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), "consume",
                   {KafkaError.GROUP_AUTHORIZATION_FAILED: "group validate"})
    assert str(topic).startswith("consume: not authorized")
