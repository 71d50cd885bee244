"""A stage with exactly the ACLs `processor acls apply` grants, on a Kafka with an
authorizer: it works, and it needs every one of them.

One SASL_SSL broker for the module (`secured_kafka` of `tests/kafka_fixtures.py`), one
set of topics (an input, an output, a named output, a dead-letter topic, and a sink's
input) and one user. For each of three stages (at-least-once, exactly-once, and an
at-least-once sink that writes no topic), `processor acls apply` (run twice: the second
time creates nothing) grants the user the ACLs `processor acls show` lists, and nothing
else. Then:

* `processor run` as that user, with the client settings file `processor broker
  --secure` writes, moves every record to the output and a bad record to the
  dead-letter topic, and commits them all: no DESCRIBE, DESCRIBE_CONFIGS or
  IDEMPOTENT_WRITE is needed besides (the sink needs IDEMPOTENT_WRITE, and only that);
* with any one of those ACLs deleted, a fresh `processor run` stops by itself with one
  error line naming what is missing (the topic, the group, the transactional id or the
  cluster) and the operation to grant.

And the broker's secrets stay off command lines: no process's command line holds a
user's password while the broker runs, nor while its storage is formatted; the broker's
directory keeps its certificates and passwords from one start to the next.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from processor.backends.abstract import TopicPartition
from processor.backends.kafka.admin import AclKey, KafkaAdmin, acl_key
from processor.cli.main import main
from processor.core.artifact import Artifact
from processor.devtools.kafka_security import (
    BROKER_KEYSTORE_FILE,
    CA_FILE,
    CA_KEY_FILE,
    USERS_FILE,
    BrokerSecurity,
    ensure_certificates,
)
from processor.devtools.local_kafka import FORMAT_ARGFILE, LocalKafka
from processor.ops.acls import Acl
from processor.serde.codec import Codec
from tests.faults.raw import read_raw
from tests.kafka_fixtures import Secured
from tests.procs import ROOT, produce_artifacts, wait_for

pytestmark = pytest.mark.kafka

USER = "stage-ok"
PRINCIPAL = f"User:{USER}"
STOP_WITHIN = 30.0
"""Seconds a stage denied an ACL may take to stop by itself (a few, measured)."""
GOOD = 40
"""Good records per stage, and one bad record among them (none for the sink)."""
BAD_AT = 25


def _cli(*args: str) -> tuple[int, str]:
    """`processor ARGS` in this process: its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@dataclass(frozen=True)
class Stage:
    """The stage's topics and group, and its flags: a stage with an output, a named
    output and a dead-letter topic, or a sink (none of them)."""

    shape: str
    source: str
    group: str
    output: str | None = None
    audit: str | None = None
    dlq: str | None = None

    @property
    def guarantee(self) -> str:
        return "exactly-once" if self.shape == "exactly-once" else "at-least-once"

    def flags(self) -> list[str]:
        flags = ["--input-topic", self.source, "--group", self.group,
                 "--guarantee", self.guarantee]
        if self.output is not None:
            flags += ["--output-topic", self.output, "--output", f"audit={self.audit}",
                      "--dlq-topic", str(self.dlq)]
        return flags

    @property
    def handler(self) -> str:
        module = "tests.integration"
        return f"{module}.test_least_privilege:drop" if self.shape == "sink" else \
            f"{module}.chain_handlers:hop"

    @property
    def transactional_base(self) -> str:
        return f"{self.group}-{self.group}"  # the name is the group's

    @property
    def cluster(self) -> str:
        return "kafka-cluster"


def drop(artifact: Artifact) -> None:
    """The sink stage's handler: it keeps nothing."""


SHAPES = ("at-least-once", "exactly-once", "sink")
ROLES = {
    # role -> (resource kind, the Stage attribute naming it, the operation)
    "input": ("TOPIC", "source", "READ"),
    "group": ("GROUP", "group", "READ"),
    "output": ("TOPIC", "output", "WRITE"),
    "named output": ("TOPIC", "audit", "WRITE"),
    "dead-letter": ("TOPIC", "dlq", "WRITE"),
    "transactional id": ("TRANSACTIONAL_ID", "transactional_base", "WRITE"),
    "cluster": ("CLUSTER", "cluster", "IDEMPOTENT_WRITE"),
}
SHAPE_ROLES = {
    "at-least-once": ["input", "group", "output", "named output", "dead-letter"],
    "exactly-once": ["input", "group", "output", "named output", "dead-letter",
                     "transactional id"],
    "sink": ["input", "group", "cluster"],
}
"""The ACLs each stage needs, by role: exactly those `processor acls show` lists."""


@dataclass(frozen=True)
class Granted:
    """A stage whose user holds exactly the ACLs `processor acls apply` created."""

    secured: Secured
    stage: Stage
    acls: list[Acl]
    apply_output: tuple[str, str]
    """What `processor acls apply` printed, the first time and the second."""

    def admin(self) -> KafkaAdmin:
        return self.secured.admin_broker().admin()


@pytest.fixture(scope="module")
def topics(secured_kafka: Secured) -> dict[str, str]:
    """One set of topics for every stage; the sink reads an input of its own (it may not
    dead-letter the bad records of the others)."""
    tag = uuid.uuid4().hex[:8]
    names = {role: f"lp-{role}-{tag}" for role in ("in", "out", "audit", "dlq", "sink-in")}
    admin = secured_kafka.admin_broker().admin()
    for topic in names.values():
        admin.create_topic(topic, partitions=2)
    return names


def _acls_of(admin: KafkaAdmin) -> set[AclKey]:
    return admin.describe_acls(PRINCIPAL)


def _settle(admin: KafkaAdmin, wanted: set[AclKey]) -> None:
    """Wait until the authorizer holds exactly `wanted` for the user."""
    wait_for(lambda: _acls_of(admin) == wanted, 15, f"the ACLs of {PRINCIPAL} to settle",
             interval=0.05)


@pytest.fixture(scope="module")
def granted(request: pytest.FixtureRequest, secured_kafka: Secured,
            topics: dict[str, str]) -> Iterator[Granted]:
    shape: str = request.param
    group = f"lp-{shape}-{uuid.uuid4().hex[:8]}"
    stage = (Stage(shape, topics["sink-in"], group) if shape == "sink" else
             Stage(shape, topics["in"], group, topics["out"], topics["audit"], topics["dlq"]))
    user_file = str(secured_kafka.settings_file(USER))
    code, shown = _cli("acls", "show", "--config", user_file, *stage.flags(),
                       "--format", "json")
    assert code == 0
    acls = [Acl(a["resource_type"], a["resource_name"], a["operation"], a["principal"],
                a["pattern_type"], a["host"], a["why"]) for a in json.loads(shown)]
    applied = [_cli("acls", "apply", "--config", user_file, *stage.flags(),
                    "--command-config", str(secured_kafka.settings_file("admin")))
               for _ in range(2)]
    assert [code for code, _ in applied] == [0, 0]
    admin = secured_kafka.admin_broker().admin()
    _settle(admin, {acl_key(a) for a in acls})
    try:
        yield Granted(secured_kafka, stage, acls, (applied[0][1], applied[1][1]))
    finally:
        admin.delete_acls(acls)
        _settle(admin, set())


def _run(granted: Granted, log: Path) -> subprocess.Popen[bytes]:
    """`processor run` as the user, with its client settings file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["run", "--config", str(granted.secured.settings_file(USER)), *granted.stage.flags(),
            "--handler", granted.stage.handler, "--metrics-port", "off",
            "--commit-interval", "0.2"]
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "processor.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _fed(granted: Granted) -> int:
    """The records in the input topic (the stages that share it read them all)."""
    return sum(granted.admin().high_watermarks(granted.stage.source).values())


def _committed(granted: Granted) -> int:
    offsets = granted.admin().group_offsets(granted.stage.group, [granted.stage.source])
    return sum(v for tp, v in offsets.items() if isinstance(tp, TopicPartition) and v > 0)


@pytest.mark.parametrize("granted", SHAPES, indirect=True, scope="module")
def test_apply_creates_what_show_lists_and_applying_again_creates_nothing(
        granted: Granted) -> None:
    first, again = granted.apply_output
    stage = granted.stage
    count = len(SHAPE_ROLES[stage.shape])
    assert len(granted.acls) == count
    assert first.splitlines()[-1].startswith(f"{count} created, 0 already there")
    assert again.splitlines()[-1].startswith(f"0 created, {count} already there")
    assert first.count("created  ") == again.count("exists   ") == count
    assert f"READ on topic {stage.source} for {PRINCIPAL}" in first
    if stage.shape == "exactly-once":
        assert f"WRITE on transactional id {stage.transactional_base} (prefix)" in first
    if stage.shape == "sink":
        assert f"IDEMPOTENT_WRITE on the cluster for {PRINCIPAL}" in first
    # Exactly these, nothing more (no DESCRIBE: READ and WRITE imply it).
    assert _acls_of(granted.admin()) == {acl_key(a) for a in granted.acls}


@pytest.mark.parametrize("granted", SHAPES, indirect=True, scope="module")
def test_a_stage_with_exactly_its_acls_works(granted: Granted, tmp_path: Path) -> None:
    stage = granted.stage
    admin_broker = granted.secured.admin_broker()
    bad = f"not an artifact ({stage.shape})".encode()
    sent = produce_artifacts(admin_broker, stage.source, BAD_AT, keys=1)
    if stage.dlq is not None:
        feeder = admin_broker.producer(client_id="test-feed-bad")
        feeder.produce(stage.source, bad, b"k0")
        assert feeder.flush(30) == 0
        feeder.close()
    sent += produce_artifacts(admin_broker, stage.source, GOOD - BAD_AT, keys=1, start=BAD_AT)
    total = _fed(granted)
    began = time.monotonic()
    proc = _run(granted, tmp_path / "stage.log")
    try:
        wait_for(lambda: _committed(granted) >= total or proc.poll() is not None, 60,
                 "the stage to commit every record")
    finally:
        proc.terminate()
        code = proc.wait(30)
    output = (tmp_path / "stage.log").read_text()
    assert code == 0, output[-3000:]
    assert "processor run: error" not in output and "Traceback" not in output, output[-3000:]
    assert _committed(granted) == total
    print(f"{stage.shape}: {total} records in {time.monotonic() - began:.1f}s")
    if stage.output is None or stage.dlq is None:
        return
    # The topics are shared by the stages: this one's records by their ids.
    codec = Codec()
    ids = {a.id for a in sent}
    written = [codec.decode(m.value() or b"")
               for m in read_raw(admin_broker, stage.output, GOOD, 20, settle=0.5)]
    mine = [a for a in written if a.id in ids]
    assert sorted(a.id for a in mine) == sorted(ids)  # each once
    assert all(a.get("hops") == 1 for a in mine)
    dead = [m.value() for m in read_raw(admin_broker, stage.dlq, 1, 20, settle=0.5)]
    assert dead.count(bad) == 1


@pytest.mark.parametrize(("granted", "role"),
                         [(shape, role) for shape in SHAPES for role in SHAPE_ROLES[shape]],
                         indirect=["granted"], scope="module")
def test_without_any_one_of_its_acls_a_stage_stops_with_one_line_naming_it(
        granted: Granted, tmp_path: Path, role: str) -> None:
    kind, attribute, operation = ROLES[role]
    stage = granted.stage
    name = str(getattr(stage, attribute))
    (acl,) = [a for a in granted.acls if a.kind == kind and a.name == name]
    admin = granted.admin()
    everything = {acl_key(a) for a in granted.acls}
    admin.delete_acls([acl])
    _settle(admin, everything - {acl_key(acl)})
    began = time.monotonic()
    try:
        proc = _run(granted, tmp_path / "stage.log")
        try:
            code = proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the stage without {acl} did not stop:\n"
                                 f"{(tmp_path / 'stage.log').read_text()[-3000:]}") from None
        seconds = time.monotonic() - began
    finally:
        admin.create_acls([acl])
        _settle(admin, everything)
    output = (tmp_path / "stage.log").read_text()
    lines = [line for line in output.splitlines() if line.startswith("processor run: error:")]
    assert code == 1, output[-3000:]
    assert len(lines) == 1, output[-3000:]
    line = lines[0]
    named = "the cluster" if kind == "CLUSTER" else name
    assert named in line and operation in line, line
    for password in granted.secured.security.users.values():
        assert password not in output
    print(f"{stage.shape}, without {acl.operation} on {acl.resource}: stopped in "
          f"{seconds:.1f}s: {line}")


# --- the broker's secrets ------------------------------------------------------------------


def _command_lines() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue  # ended meanwhile, or not ours to read
    return found


def test_no_password_is_on_any_command_line_while_the_broker_runs(
        secured_kafka: Secured) -> None:
    passwords = [p for p in secured_kafka.security.users.values() if p]
    lines = _command_lines()
    brokers = [pid for pid, line in lines.items() if "kafka.Kafka" in line]
    assert brokers, "the broker's process was not found"
    assert not [pid for pid, line in lines.items() if any(p in line for p in passwords)]


def test_the_storage_format_reads_the_passwords_from_a_file_it_removes(
        secured_kafka: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The format of a second node's storage (no broker started), its users' passwords
    # with characters an argument file must quote: the command line names the file only.
    import processor.devtools.local_kafka as local_kafka

    security = BrokerSecurity.create(tmp_path / "tls",
                                     users={"quoted": "p w\\z#x=y@", "plain": ""})
    kafka = LocalKafka(workdir=tmp_path / "kafka", security=security)
    seen: list[list[str]] = []
    real = subprocess.Popen

    def spy(command: list[str], **kwargs: object) -> subprocess.Popen[str]:
        seen.append(list(command))
        argfile = Path(command[-1].removeprefix("@"))
        assert argfile.stat().st_mode & 0o077 == 0  # the owner's only
        return real(command, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "Popen", spy)
    kafka._java = local_kafka.require_java()
    kafka._libs = local_kafka.ensure_jars()
    kafka.node_configs = local_kafka.plan_nodes(1, tmp_path / "kafka")
    node = kafka.node_configs[0]
    node.directory.mkdir(parents=True)
    running = secured_kafka.kafka.node_configs[0]
    node.properties_file.write_text(running.properties_file.read_text().replace(
        str(running.data_dir), str(node.data_dir)))
    node.log4j_file.write_text(local_kafka.render_log4j(node))
    kafka._format_all()
    assert len(seen) == 1 and seen[0][-1] == f"@{node.directory / FORMAT_ARGFILE}"
    command = " ".join(seen[0])
    assert not any(p in command for p in security.users.values())
    assert not (node.directory / FORMAT_ARGFILE).exists()
    assert (node.data_dir / "meta.properties").is_file()  # formatted


def test_the_secured_broker_keeps_its_certificates_and_passwords(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    first = BrokerSecurity.create(directory, users={"orders": ""})
    assert sorted(first.renewed) == sorted([CA_FILE, CA_KEY_FILE, BROKER_KEYSTORE_FILE,
                                            "untrusted-ca.pem"])
    files = {name: (directory / name).read_bytes()
             for name in (CA_FILE, CA_KEY_FILE, BROKER_KEYSTORE_FILE)}
    assert (directory / USERS_FILE).stat().st_mode & 0o777 == 0o600
    assert (directory / CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    again = BrokerSecurity.create(directory, users={"orders": "", "billing": ""})
    assert again.renewed == []
    assert {name: (directory / name).read_bytes() for name in files} == files
    assert {k: again.users[k] for k in first.users} == first.users
    assert set(again.users) == {"broker", "admin", "orders", "billing"}
    # A broker key store that no longer fits (gone) is made again under the same CA.
    (directory / BROKER_KEYSTORE_FILE).unlink()
    third = BrokerSecurity.create(directory)
    assert third.renewed == [BROKER_KEYSTORE_FILE]
    assert (directory / CA_FILE).read_bytes() == files[CA_FILE]
    assert "orders" not in third.users  # not asked for: not a user of this start,
    fourth = BrokerSecurity.create(directory, users={"orders": ""})
    assert fourth.users["orders"] == first.users["orders"]  # yet its password is kept
    # An expiring CA is replaced, and the broker certificate with it.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=29, hours=1)
    _, renewed = ensure_certificates(directory, now=later)
    assert renewed == [CA_FILE, CA_KEY_FILE, BROKER_KEYSTORE_FILE, "untrusted-ca.pem"]
    assert CA_FILE in renewed and BROKER_KEYSTORE_FILE in renewed
    assert (directory / CA_FILE).read_bytes() != files[CA_FILE]
    document = yaml.safe_load((directory / USERS_FILE).read_text())
    assert document["orders"] == first.users["orders"]
