"""Security policies in a stage on the in-memory broker, the built-in handlers by name,
and the security settings (secrets kept out of output)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError
from processor.core.handlers import Outcome, Routed, registry
from processor.runtime.build import StageSetup, build_stage
from processor.runtime.dead_letters import H_ERROR_MESSAGE, H_REASON, header_dict
from processor.runtime.stage import Stage
from processor.security.approvals import approve
from processor.security.keys import (
    SigningKey,
    generate,
    load_opening_key,
    load_signing_key,
    new_signing_key,
)
from processor.security.policy import Keyring, SecurityConfig
from processor.security.sealing import is_sealed
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore
from tests.unit.stage_support import CODEC, committed, feed, make_broker, options, read_all


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    """Keys of a small deployment: a producer's signing key, two approvers, a retired
    key, the stage's own signing key, and a sealing key pair."""
    trust = tmp_path / "trust"
    trust.mkdir()
    for key_id in ("producer", "alice", "bob", "old", "stage"):
        generate("signing", key_id, tmp_path)
        (trust / f"{key_id}.pub").write_bytes((tmp_path / f"{key_id}.pub").read_bytes())
    generate("sealing", "billing", tmp_path)
    generate("sealing", "audit", tmp_path)
    return tmp_path


def key(keydir: Path, key_id: str) -> SigningKey:
    return load_signing_key(keydir / f"{key_id}.key")


def run(stage: Stage, records: int) -> None:
    stage.run(max_records=records, idle_timeout=0.5)


def tag(a: Artifact) -> Outcome:
    return a.with_meta("handled", True)


def identity(a: Artifact) -> Outcome:
    return a


def dead_reasons(broker: object) -> list[tuple[str, str, str]]:
    out = []
    for m in read_all(broker, "dlq"):  # type: ignore[arg-type]
        h = header_dict(m.headers())
        out.append((CODEC.decode(m.value() or b"").get("case", "?"), h[H_REASON],
                    h[H_ERROR_MESSAGE]))
    return sorted(out)


def test_require_signature_dead_letters_bad_records_and_passes_good_ones(keydir: Path) -> None:
    producer, old = key(keydir, "producer"), key(keydir, "old")
    good = [sign(Artifact.new(f"good {i}", meta={"case": "good"}), producer) for i in range(20)]
    signed = sign(Artifact.new("x", meta={"case": "tampered-envelope"}), producer)
    bad = [
        Artifact.new("unsigned", meta={"case": "unsigned"}),
        sign(Artifact.new("f", meta={"case": "forged"}), new_signing_key("producer")),
        signed.with_origin("somewhere else"),
        sign(Artifact.new("p", meta={"case": "tampered-payload"}), producer).with_fields(
            payload=b"changed"),
        sign(Artifact.new("u", meta={"case": "unknown-key"}), new_signing_key("stranger")),
        sign(Artifact.new("r", meta={"case": "retired-key"}), old),
    ]
    broker = make_broker()
    values = [CODEC.encode(a) for a in [*good, *bad]]
    feed(broker, values)
    setup = StageSetup(options(), security=SecurityConfig(
        trust_store=(str(keydir / "trust"),), retired_keys=("old",), require_signature=True))
    stage = build_stage(setup, broker, handler=identity)
    run(stage, len(values))

    out = read_all(broker, "out")
    assert sorted(m.value() or b"" for m in out) == sorted(values[:20])  # passed as is
    reasons = dead_reasons(broker)
    assert [(case, reason) for case, reason, _ in reasons] == [
        (c, "signature") for c in sorted(("forged", "retired-key", "tampered-envelope",
                                          "tampered-payload", "unknown-key", "unsigned"))]
    why = {case: text for case, _, text in reasons}
    assert "retired key 'old'" in why["retired-key"]
    assert "unknown key id 'stranger'" in why["unknown-key"]
    assert "not signed" in why["unsigned"]
    # Nothing lost: every record passed or was dead-lettered, and all are committed.
    stats = stage.stats
    assert stats.consumed == len(values) == stats.passed + stats.dead_lettered
    assert stats.dead_letter_reasons == {"signature": 6}
    assert sum(committed(broker).values()) == len(values)


def test_require_approvals(keydir: Path) -> None:
    producer, alice, bob = (key(keydir, k) for k in ("producer", "alice", "bob"))
    base = [sign(Artifact.new(f"a{i}", meta={"case": c}), producer)
            for i, c in enumerate(("two", "one", "none", "twice-alice"))]
    arts = [approve(approve(base[0], alice), bob), approve(base[1], alice), base[2],
            approve(approve(base[3], alice), alice)]
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in arts])
    setup = StageSetup(options(), security=SecurityConfig(
        trust_store=(str(keydir / "trust"),), require_signature=True, require_approvals=2))
    stage = build_stage(setup, broker, handler=identity)
    run(stage, 4)
    assert [CODEC.decode(m.value() or b"").get("case") for m in read_all(broker, "out")] == \
        ["two"]
    assert [(c, r) for c, r, _ in dead_reasons(broker)] == [
        ("none", "signature"), ("one", "signature"), ("twice-alice", "signature")]
    assert stage.stats.consumed == 4 == stage.stats.passed + stage.stats.dead_lettered


def test_sealing_and_signing_stage_then_opening_stage(keydir: Path) -> None:
    """Stage one seals its outputs for billing and audit and signs them; stage two
    verifies them and opens them with billing's key; a stage with a key the payloads
    were not sealed for dead-letters them with reason `sealed`."""
    broker = make_broker(extra=("mid", "dlq2", "out3", "dlq3"))
    plain = [Artifact.new(f"secret {i}", meta={"case": "ok", "subject": f"cust-{i}"})
             for i in range(10)]
    feed(broker, [CODEC.encode(a) for a in plain])
    first = build_stage(StageSetup(options(output_topic="mid"), security=SecurityConfig(
        sign_key=str(keydir / "stage.key"),
        seal_recipients=(str(keydir / "billing.pub"), str(keydir / "audit.pub")),
        pseudonym_key=SecretStr("p" * 32), merkle=True)), broker, handler=tag)
    run(first, 10)
    mid = [CODEC.decode(m.value() or b"") for m in read_all(broker, "mid")]
    assert len(mid) == 10 and all(is_sealed(a) and a.payload == b"" for a in mid)
    assert all(a.issuer == "stage" and a.pseudonym_hash and "subject" not in a.meta
               for a in mid)
    assert all(b"secret" not in (m.value() or b"") for m in read_all(broker, "mid"))
    trust = TrustStore.load([keydir / "trust"])
    assert all(verify(a, trust) for a in mid)

    second = build_stage(StageSetup(
        options(name="s2", input_topic="mid", output_topic="out", dlq_topic="dlq2",
                group="g2"),
        security=SecurityConfig(trust_store=(str(keydir / "trust"),), require_signature=True,
                                open_key=str(keydir / "billing.key"))), broker, handler=identity)
    run(second, 10)
    opened = [CODEC.decode(m.value() or b"") for m in read_all(broker, "out")]
    assert sorted(a.text() for a in opened) == sorted(a.text() for a in plain)
    assert all(a.get("handled") is True and not is_sealed(a) for a in opened)

    generate("sealing", "stranger", keydir)
    third = build_stage(StageSetup(
        options(name="s3", input_topic="mid", output_topic="out3", dlq_topic="dlq3",
                group="g3"),
        security=SecurityConfig(open_key=str(keydir / "stranger.key"))), broker,
        handler=identity)
    run(third, 10)
    assert read_all(broker, "out3") == []
    dead = read_all(broker, "dlq3")
    assert len(dead) == 10
    assert {header_dict(m.headers())[H_REASON] for m in dead} == {"sealed"}
    assert third.stats.consumed == 10 == third.stats.dead_lettered


def test_built_in_handlers_by_name(keydir: Path) -> None:
    assert {"sign", "verify", "seal", "open"} <= set(registry.names())
    producer = key(keydir, "producer")
    arts = [sign(Artifact.new(f"v{i}", meta={"case": "good"}), producer) for i in range(5)]
    arts.append(Artifact.new("u", meta={"case": "unsigned"}))
    broker = make_broker()
    feed(broker, [CODEC.encode(a) for a in arts])
    setup = StageSetup(options(), handlers=("verify", "seal", "sign"), security=SecurityConfig(
        trust_store=(str(keydir / "trust"),), sign_key=str(keydir / "stage.key"),
        seal_recipients=(str(keydir / "audit.pub"),)))
    stage = build_stage(setup, broker)
    run(stage, 6)
    out = [CODEC.decode(m.value() or b"") for m in read_all(broker, "out")]
    assert len(out) == 5 and all(a.issuer == "stage" and is_sealed(a) for a in out)
    assert [(c, r) for c, r, _ in dead_reasons(broker)] == [("unsigned", "signature")]
    audit = load_opening_key(keydir / "audit.key")
    opener = registry.resolve("open")
    opened = opener.bind(Keyring(opener=audit))(out[0])  # type: ignore[attr-defined]
    assert opened.text().startswith("v")


@pytest.mark.parametrize(("handlers", "message"), [
    (("sign",), "handler 'sign' needs a signing key: set sign_key"),
    (("verify",), "handler 'verify' needs trusted keys: set trust_store"),
    (("seal",), "handler 'seal' needs recipients: set seal_recipients"),
    (("open",), "handler 'open' needs an opening key: set open_key"),
])
def test_a_built_in_handler_without_its_key_stops_the_build(handlers: tuple[str, ...],
                                                              message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_stage(StageSetup(options(), handlers=handlers), make_broker())


def test_unbound_built_in_handler_says_how_to_bind_it() -> None:
    with pytest.raises(ConfigError, match="not bound to keys"):
        registry.resolve("sign")(Artifact.new("x"))


def test_bad_key_files_and_policies_stop_the_build(keydir: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        build_stage(StageSetup(options(), security=SecurityConfig(
            sign_key=str(keydir / "nope.key"))), make_broker(), handler=identity)
    with pytest.raises(ConfigError, match="need trusted keys"):
        build_stage(StageSetup(options(), security=SecurityConfig(require_signature=True)),
                    make_broker(), handler=identity)
    with pytest.raises(ConfigError, match="signing needs Ed25519"):
        build_stage(StageSetup(options(), security=SecurityConfig(
            sign_key=str(keydir / "billing.key"))), make_broker(), handler=identity)


def test_routed_and_fanned_out_outputs_are_signed(keydir: Path) -> None:
    def split(a: Artifact) -> Outcome:
        return [a, Routed("audit", a.with_meta("copy", True))]

    broker = make_broker(extra=("audit",))
    feed(broker, [CODEC.encode(Artifact.new("x"))])
    stage = build_stage(StageSetup(options(outputs={"audit": "audit"}),
                                   security=SecurityConfig(sign_key=str(keydir / "stage.key"))),
                        broker, handler=split)
    run(stage, 1)
    trust = TrustStore.load([keydir / "trust"])
    for topic in ("out", "audit"):
        (m,) = read_all(broker, topic)
        assert verify(CODEC.decode(m.value() or b""), trust).issuer == "stage"


# --- settings ----------------------------------------------------------------------------


MINIMAL = {"PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_GROUP": "g",
           "PROCESSOR_HANDLERS": "verify", "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
PSEUDONYM = "pseudonym-key-value-0123456789"


def test_security_settings_from_the_environment(keydir: Path) -> None:
    from processor.ops.settings import load_config
    from processor.security.keys import public_info

    inline = keydir / "inline"
    inline.mkdir()  # a key of its own: one public key under two ids stops the stage
    public = public_info(generate("signing", "inline-1", inline).public).public
    config = load_config(None, {
        **MINIMAL, "PROCESSOR_TRUST_STORE": str(keydir / "trust"),
        "PROCESSOR_TRUSTED_KEYS": f"inline-1={public}", "PROCESSOR_RETIRED_KEYS": "old",
        "PROCESSOR_REQUIRE_SIGNATURE": "true", "PROCESSOR_REQUIRE_APPROVALS": "2",
        "PROCESSOR_SIGN_KEY": str(keydir / "stage.key"),
        "PROCESSOR_SEAL_RECIPIENTS": f"{keydir / 'billing.pub'},{keydir / 'audit.pub'}",
        "PROCESSOR_PSEUDONYM_KEY": PSEUDONYM}, {})
    security = config.security
    assert security.require_signature and security.require_approvals == 2
    assert dict(security.trusted_keys) == {"inline-1": public}
    assert security.retired_keys == ("old",) and len(security.seal_recipients) == 2
    keyring = Keyring.load(security)
    assert keyring.signer is not None and keyring.signer.id == "stage"
    assert set(keyring.trust.keys) >= {"inline-1", "producer"}
    assert PSEUDONYM not in config.describe() and PSEUDONYM not in repr(config)
    assert "pseudonym_key: ***" in config.describe()


def test_flags_and_bad_values(keydir: Path) -> None:
    import argparse

    from processor.ops.settings import add_run_arguments, load_config

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    flags = vars(parser.parse_args([
        "--trusted-key", "a=AAAA", "--retired-key", "old", "--approver", "alice",
        "--seal-for", "x.pub", "--require-signature", "--require-approvals", "1"]))
    flags.pop("config")
    config = load_config(None, MINIMAL, flags)
    assert config.security.require_approvals_from == ("alice",)
    assert config.sources["require_signature"] == "flag --require-signature"
    with pytest.raises(ConfigError, match="require_approvals: must not be negative"):
        load_config(None, {**MINIMAL, "PROCESSOR_REQUIRE_APPROVALS": "-1"}, {})


def test_config_check_never_prints_the_pseudonym_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from processor.cli.main import main

    generate("signing", "shop", tmp_path)  # a trust store with a key, as run requires
    path = tmp_path / "stage.yaml"
    path.write_text(f"input_topic: in\ngroup: g\nhandlers: [verify]\n"
                    f"bootstrap_servers: 127.0.0.1:9092\nrequire_signature: true\n"
                    f"trust_store: [{tmp_path}]\npseudonym_key: {PSEUDONYM}\n")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert PSEUDONYM not in out and "pseudonym_key: ***" in out
    assert "require_signature: true" in out


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    from processor.ops.logs import configure_logging

    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    configure_logging("text", "INFO", stream=out)
    yield out
    root.removeHandler(configure_logging("text", "INFO", stream=io.StringIO()))
    root.setLevel(level)


def test_the_pseudonym_key_is_scrubbed_from_logs(log_stream: io.StringIO) -> None:
    from processor.ops.settings import load_config
    from processor.runtime.runner import _scrub_secrets

    config = load_config(None, {**MINIMAL, "PROCESSOR_PSEUDONYM_KEY": PSEUDONYM}, {})
    _scrub_secrets(config)
    logging.getLogger("processor.test").warning("key is %s; config %s", PSEUDONYM,
                                                config.describe())
    text = log_stream.getvalue()
    assert "key is ***" in text and PSEUDONYM not in text


def test_the_pseudonym_key_reaches_no_metric(keydir: Path) -> None:
    from prometheus_client import REGISTRY, generate_latest

    broker = make_broker()
    feed(broker, [CODEC.encode(Artifact.new("x", meta={"subject": "s"}))])
    stage = build_stage(StageSetup(options(name="pseudo"), security=SecurityConfig(
        pseudonym_key=SecretStr(PSEUDONYM))), broker, handler=identity)
    run(stage, 1)
    assert PSEUDONYM.encode() not in generate_latest(REGISTRY)
    (m,) = read_all(broker, "out")
    out = CODEC.decode(m.value() or b"")
    assert out.pseudonym_hash is not None and "subject" not in out.meta
    assert PSEUDONYM.encode() not in (m.value() or b"")


async def tag_async(a: Artifact) -> Outcome:
    return a.with_meta("handled", True)


def tag_batch(batch: list[Artifact]) -> list[Outcome]:
    return [a.with_meta("handled", True) for a in batch]


async def tag_batch_async(batch: list[Artifact]) -> list[Outcome]:
    return [a.with_meta("handled", True) for a in batch]


@pytest.mark.parametrize("handler", [tag_async, tag_batch, tag_batch_async],
                         ids=["async", "batch", "async-batch"])
def test_policies_around_concurrent_handlers(keydir: Path, handler: object) -> None:
    """An async or batch handler keeps its kind under the policies: bad inputs are
    dead-lettered one by one with reason `signature`, the others handled and signed."""
    producer = key(keydir, "producer")
    good = [sign(Artifact.new(f"good {i}", meta={"case": "good"}), producer) for i in range(30)]
    bad = [Artifact.new("unsigned", meta={"case": "unsigned"}),
           sign(Artifact.new("f", meta={"case": "forged"}), new_signing_key("producer"))]
    broker = make_broker()
    arts = [*good[:10], bad[0], *good[10:20], bad[1], *good[20:]]
    feed(broker, [CODEC.encode(a) for a in arts])
    setup = StageSetup(options(), security=SecurityConfig(
        trust_store=(str(keydir / "trust"),), require_signature=True,
        sign_key=str(keydir / "stage.key")))
    stage = build_stage(setup, broker, handler=handler)  # type: ignore[arg-type]
    run(stage, len(arts))

    out = [CODEC.decode(m.value() or b"") for m in read_all(broker, "out")]
    assert sorted(a.text() for a in out) == sorted(a.text() for a in good)
    trust = TrustStore.load([keydir / "trust"])
    assert all(a.get("handled") is True and a.issuer == "stage" and verify(a, trust)
               for a in out)
    assert [(c, r) for c, r, _ in dead_reasons(broker)] == [
        ("forged", "signature"), ("unsigned", "signature")]
    assert stage.stats.consumed == len(arts)
    assert sum(committed(broker).values()) == len(arts)
