"""Stages on a Kafka that demands TLS, SCRAM-SHA-512 logins and ACLs.

One local broker for the module (`secured_kafka` of `tests/kafka_fixtures.py`), with a
SASL_SSL listener only (certificates made with `cryptography`, SCRAM users created when
its storage is formatted, the StandardAuthorizer).
Each test runs `processor run` as a process, its Kafka settings spread over the three
settings sources (YAML `kafka:`, `PROCESSOR_KAFKA__*` variables, `--set` flags), and checks:

* with READ on its input and group and WRITE on its output and dead-letter topics, a
  stage works end to end over TLS: every record reaches the output or the dead-letter
  topic, and the group commits everything;
* without WRITE on its output, or on its dead-letter topic, the stage stops by itself
  with one error line naming the topic, and commits no offset of a record it did not
  produce;
* a wrong password, and a CA that did not sign the broker's certificate, each stop the
  stage within seconds with one error line saying what to check;

and no password ever shows in the output.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin._resource import ResourceType

from processor.backends.abstract import TopicPartition
from processor.backends.kafka import KafkaBroker
from processor.core.errors import NotAuthorized
from processor.devtools.kafka_security import create_acls, describe_acl, stage_acls
from tests.faults.raw import read_raw
from tests.kafka_fixtures import Secured
from tests.procs import ROOT, processor_cmd, produce_artifacts, read_topic, wait_for

pytestmark = pytest.mark.kafka

STOP_WITHIN = 45.0
"""Seconds a stage denied access may take to stop by itself (it takes a few)."""


@dataclass
class Topics:
    source: str
    output: str
    dlq: str
    group: str


def make_topics(secured_kafka: Secured, unique_name: Callable[[str], str]) -> Topics:
    topics = Topics(unique_name("sec-in"), unique_name("sec-out"), unique_name("sec-dlq"),
                    unique_name("sec-group"))
    admin = secured_kafka.admin_broker().admin()
    for topic in (topics.source, topics.output, topics.dlq):
        admin.create_topic(topic, partitions=2)
    return topics


def feed(secured_kafka: Secured, topic: str, good: int, bad_at: tuple[int, ...] = ()) -> None:
    """`good` artifacts, with a record that is no artifact at each index of `bad_at`
    (keyed alike, so that they land in one partition in order)."""
    broker = secured_kafka.admin_broker()
    if not bad_at:
        produce_artifacts(broker, topic, good, keys=1)
        return
    start = 0
    producer = broker.producer(client_id="test-feed-bad")
    for index in bad_at:
        produce_artifacts(broker, topic, index - start, keys=1, start=start)
        producer.produce(topic, b"not an artifact", b"k0")
        assert producer.flush(30) == 0
        start = index
    producer.close()
    produce_artifacts(broker, topic, good - start, keys=1, start=start)


def run_stage(secured_kafka: Secured, topics: Topics, user: str, tmp_path: Path, *,
              password: str | None = None, ca: Path | None = None,
              guarantee: str = "at-least-once", metrics: bool = False
              ) -> tuple[subprocess.Popen[bytes], Path]:
    """`processor run` as `user`: bootstrap servers, the protocol and the CA from YAML,
    the user and password from the environment, the mechanism from a flag."""
    settings = secured_kafka.security.client_settings(user, password=password, ca=ca)
    config = tmp_path / f"{user}.yaml"
    config.write_text(yaml.safe_dump({
        "bootstrap_servers": secured_kafka.bootstrap,
        "kafka": {"security.protocol": settings["security.protocol"],
                  "ssl.ca.location": settings["ssl.ca.location"]},
    }))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PROCESSOR_KAFKA__SASL_USERNAME": settings["sasl.username"],
           "PROCESSOR_KAFKA__SASL_PASSWORD": settings["sasl.password"]}
    log = tmp_path / f"{user}.log"
    args = ["run", "--config", str(config), "--set", f"sasl.mechanism={settings['sasl.mechanism']}",
            "--input-topic", topics.source, "--output-topic", topics.output,
            "--dlq-topic", topics.dlq, "--group", topics.group,
            "--handler", "tests.integration.chain_handlers:hop",
            "--metrics-port", "0" if metrics else "off", "--metrics-host", "127.0.0.1",
            "--commit-interval", "0.2", "--guarantee", guarantee]
    with log.open("wb") as out:
        proc = subprocess.Popen(processor_cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
    return proc, log


def stopped_by_itself(proc: subprocess.Popen[bytes], log: Path) -> tuple[int, float, str]:
    """(exit code, seconds taken, output) of a stage expected to stop on its own."""
    began = time.monotonic()
    try:
        code = proc.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the stage did not stop within {STOP_WITHIN:.0f}s:\n"
                             f"{log.read_text()[-3000:]}") from None
    return code, time.monotonic() - began, log.read_text()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("processor run: error:")]


def committed(secured_kafka: Secured, topics: Topics) -> dict[TopicPartition, int]:
    offsets = secured_kafka.admin_broker().admin().group_offsets(topics.group, [topics.source])
    return {tp: off for tp, off in offsets.items() if isinstance(tp, TopicPartition) and off >= 0}


def assert_no_secret(secured_kafka: Secured, output: str) -> None:
    for password in secured_kafka.security.users.values():
        assert password not in output


def transactional_base(topics: Topics) -> str:
    """The transactional id a stage named after its group starts from (the runner
    appends `-<host>-<slot>`)."""
    return f"{topics.group}-{topics.group}"


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_stage_with_its_acls_works_end_to_end_over_tls(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    topics = make_topics(secured_kafka, unique_name)
    eos = guarantee == "exactly-once"
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(),
                stage_acls("stage-ok", topics.source, topics.group,
                           [topics.output, topics.dlq],
                           transactional_id=transactional_base(topics) if eos else None))
    good, bad_at = 300, (40, 41, 200)
    feed(secured_kafka, topics.source, good, bad_at)
    total = good + len(bad_at)
    proc, log = run_stage(secured_kafka, topics, "stage-ok", tmp_path, guarantee=guarantee,
                          metrics=True)
    try:
        wait_for(lambda: sum(committed(secured_kafka, topics).values()) >= total or
                 proc.poll() is not None, 60, "the stage to commit every record")
        bound = re.search(r"bound to 127\.0\.0\.1:(\d+)", log.read_text())
        assert bound is not None, log.read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{bound[1]}/metrics", timeout=5) as r:
            exposed = r.read().decode()
        assert "processor_" in exposed
        assert_no_secret(secured_kafka, exposed)
    finally:
        proc.terminate()
        code = proc.wait(30)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert sum(committed(secured_kafka, topics).values()) == total
    broker = secured_kafka.admin_broker()
    out = read_topic(broker, topics.output, good, 20)
    dead = read_raw(broker, topics.dlq, len(bad_at), 20)
    # Nothing lost, nothing twice: every input is in the output or dead-lettered.
    assert sorted(int(a.meta["seq"]) for a in out) == list(range(good))
    assert [m.value() for m in dead] == [b"not an artifact"] * len(bad_at)
    assert len(out) + len(dead) == total
    assert error_lines(output) == []
    assert_no_secret(secured_kafka, output)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_stage_without_write_on_its_output_stops_and_commits_nothing(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path,
        guarantee: str) -> None:
    topics = make_topics(secured_kafka, unique_name)
    eos = guarantee == "exactly-once"
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(), [
        *stage_acls("stage-no-write", topics.source, topics.group, [topics.dlq],
                    transactional_id=transactional_base(topics) if eos else None),
        describe_acl("stage-no-write", *_topic(topics.output))])
    feed(secured_kafka, topics.source, 50)
    proc, log = run_stage(secured_kafka, topics, "stage-no-write", tmp_path, guarantee=guarantee)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    if eos:  # the transaction names the topics written, one of which was refused
        assert f"(writing to topic {topics.output})" in lines[0]
        assert "TOPIC_AUTHORIZATION_FAILED" in lines[0]
    else:  # the delivery report names the topic
        assert f"not authorized to write to topic {topics.output}" in lines[0]
    assert "WRITE" in lines[0]
    assert committed(secured_kafka, topics) == {}
    assert_no_secret(secured_kafka, output)
    print(f"stopped {seconds:.1f}s after start: {lines[0]}")


def test_stage_without_write_on_its_dead_letter_topic_stops_before_the_bad_record(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    topics = make_topics(secured_kafka, unique_name)
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(), [
        *stage_acls("stage-no-dlq", topics.source, topics.group, [topics.output]),
        describe_acl("stage-no-dlq", *_topic(topics.dlq))])
    proc, log = run_stage(secured_kafka, topics, "stage-no-dlq", tmp_path)
    # First records it may write: the stage processes and commits them.
    first = 30
    produce_artifacts(secured_kafka.admin_broker(), topics.source, first, keys=1)
    wait_for(lambda: sum(committed(secured_kafka, topics).values()) >= first
             or proc.poll() is not None, 60, "the stage to commit the first records")
    # Then one that must be dead-lettered, and more behind it (all in one partition).
    producer = secured_kafka.admin_broker().producer(client_id="test-feed-bad")
    producer.produce(topics.source, b"not an artifact", b"k0")
    assert producer.flush(30) == 0
    producer.close()
    produce_artifacts(secured_kafka.admin_broker(), topics.source, 20, keys=1, start=first)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert f"not authorized to write to topic {topics.dlq}" in lines[0]
    # The partition's committed offset stays at the record that could not be
    # dead-lettered: it and everything after it are read again once the ACL is granted.
    offsets = committed(secured_kafka, topics)
    assert list(offsets.values()) == [first], offsets
    assert_no_secret(secured_kafka, output)
    print(f"stopped {seconds:.1f}s after the last record was fed, committed {offsets}: {lines[0]}")


def test_exactly_once_stage_without_its_transactional_id_acl_is_one_error_line(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    topics = make_topics(secured_kafka, unique_name)
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(),
                stage_acls("stage-ok", topics.source, topics.group,
                           [topics.output, topics.dlq]))
    feed(secured_kafka, topics.source, 20)
    proc, log = run_stage(secured_kafka, topics, "stage-ok", tmp_path, guarantee="exactly-once")
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in lines[0]
    assert "the transactional id (WRITE)" in lines[0]
    assert committed(secured_kafka, topics) == {}
    print(f"stopped {seconds:.1f}s after start: {lines[0]}")


def test_stage_without_read_on_its_group_is_one_error_line(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    topics = make_topics(secured_kafka, unique_name)
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(),
                [acl for acl in stage_acls("stage-ok", topics.source, topics.group,
                                           [topics.output, topics.dlq])
                 if acl.restype != ResourceType.GROUP])
    feed(secured_kafka, topics.source, 20)
    proc, log = run_stage(secured_kafka, topics, "stage-ok", tmp_path)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert "GROUP_AUTHORIZATION_FAILED" in lines[0]
    assert "the consumer group (READ)" in lines[0]
    assert committed(secured_kafka, topics) == {}
    print(f"stopped {seconds:.1f}s after start: {lines[0]}")


def test_stage_that_may_write_nowhere_is_one_error_line(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    # No WRITE on any topic (a user of its own: WRITE on any topic would do): the broker
    # refuses the idempotent producer its id (it would need IDEMPOTENT_WRITE on the
    # cluster), a fatal producer error.
    topics = make_topics(secured_kafka, unique_name)
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(), [
        *stage_acls("stage-read-only", topics.source, topics.group, []),
        describe_acl("stage-read-only", *_topic(topics.output)),
        describe_acl("stage-read-only", *_topic(topics.dlq))])
    feed(secured_kafka, topics.source, 20)
    proc, log = run_stage(secured_kafka, topics, "stage-read-only", tmp_path)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    # "producer: ..." when a poll met the fatal error first, "produce to <topic>: ..." when
    # a produce() did: the cause is named either way.
    assert "not authorized (CLUSTER_AUTHORIZATION_FAILED" in lines[0], output[-3000:]
    assert "IDEMPOTENT_WRITE" in lines[0], output[-3000:]
    assert committed(secured_kafka, topics) == {}
    print(f"stopped {seconds:.1f}s after start: {lines[0]}")


def test_produce_that_meets_the_fatal_state_first_names_its_cause(
        secured_kafka: Secured, unique_name: Callable[[str], str]) -> None:
    # The order the stage above meets by chance, made certain: produce() without polling
    # until librdkafka refuses a record, so the producer turned fatal while the event
    # naming the cause (raised by confluent-kafka's next poll) was still unserved.
    topics = make_topics(secured_kafka, unique_name)
    create_acls(secured_kafka.bootstrap, secured_kafka.security.client_settings(),
                [describe_acl("stage-read-only", *_topic(topics.output))])
    broker = KafkaBroker(secured_kafka.bootstrap,
                         secured_kafka.security.client_settings("stage-read-only"))
    producer = broker.producer()
    deadline = time.monotonic() + 30
    with pytest.raises(NotAuthorized) as refused:
        while time.monotonic() < deadline:
            producer.produce(topics.output, b"x")
            time.sleep(0.01)
    producer.close(1.0)
    assert str(refused.value).startswith(f"produce to {topics.output}: not authorized "
                                         "(CLUSTER_AUTHORIZATION_FAILED"), str(refused.value)
    assert "IDEMPOTENT_WRITE" in str(refused.value)


def test_wrong_password_is_one_error_line(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    topics = make_topics(secured_kafka, unique_name)
    wrong = "not-the-password-" + unique_name("pw")
    proc, log = run_stage(secured_kafka, topics, "stage-ok", tmp_path, password=wrong)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert "authentication failed" in lines[0]
    assert "invalid credentials" in lines[0]
    assert "sasl.password" in lines[0]
    assert wrong not in output
    assert_no_secret(secured_kafka, output)
    assert seconds < 15, output
    print(f"stopped in {seconds:.1f}s: {lines[0]}")


def test_untrusted_certificate_is_one_error_line(
        secured_kafka: Secured, unique_name: Callable[[str], str], tmp_path: Path) -> None:
    topics = make_topics(secured_kafka, unique_name)
    proc, log = run_stage(secured_kafka, topics, "stage-ok", tmp_path,
                          ca=secured_kafka.security.certificates.untrusted_ca)
    code, seconds, output = stopped_by_itself(proc, log)
    lines = error_lines(output)
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    assert "TLS handshake failed" in lines[0]
    assert "certificate verify failed" in lines[0]
    assert "ssl.ca.location" in lines[0]
    assert_no_secret(secured_kafka, output)
    assert seconds < 15, output
    print(f"stopped in {seconds:.1f}s: {lines[0]}")


def _topic(name: str) -> tuple[ResourceType, str]:
    return ResourceType.TOPIC, name


def test_processor_broker_secure_writes_each_users_client_settings(
        tmp_path: Path, unique_name: Callable[[str], str]) -> None:
    directory = tmp_path / "tls"
    out, err = tmp_path / "broker.out", tmp_path / "broker.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            processor_cmd("broker", "--secure", str(directory), "--user", "orders"),
            stdout=stdout, stderr=stderr, cwd=ROOT)
    try:
        wait_for(lambda: out.read_text().strip() != "" or proc.poll() is not None, 90,
                 "the broker's bootstrap line")
        assert proc.poll() is None, err.read_text()[-3000:]
        bootstrap = out.read_text().split()[0]
        files = {p.name: p for p in directory.iterdir()}
        for name in ("admin.properties", "admin.kafka.yaml", "orders.properties",
                     "orders.kafka.yaml", "broker-keystore.pem"):
            assert files[name].stat().st_mode & 0o077 == 0, name  # the owner's only
        assert "broker.kafka.yaml" not in files  # the nodes' own user stays inside
        admin_doc = yaml.safe_load(files["admin.kafka.yaml"].read_text())
        orders_doc = yaml.safe_load(files["orders.kafka.yaml"].read_text())
        assert admin_doc["bootstrap_servers"] == orders_doc["bootstrap_servers"] == bootstrap
        assert orders_doc["kafka"]["security.protocol"] == "SASL_SSL"
        topic, group = unique_name("cli-sec"), unique_name("cli-group")
        KafkaBroker(bootstrap, admin_doc["kafka"]).admin().create_topic(topic)
        # The new user sees nothing until an ACL lets it.
        assert topic not in KafkaBroker(bootstrap, orders_doc["kafka"]).admin().list_topics()
        create_acls(bootstrap, admin_doc["kafka"], stage_acls("orders", topic, group, []))
        wait_for(lambda: topic in KafkaBroker(bootstrap, orders_doc["kafka"]).admin()
                 .list_topics(), 10, "the ACL to apply")
        assert orders_doc["kafka"]["sasl.password"] not in err.read_text()
    finally:
        proc.terminate()
        code = proc.wait(40)
    assert code == 0, err.read_text()[-3000:]
