"""`processor keys approve` and `processor keys verify`: the approvals workflow on the JSON
form `processor tail` prints, without Python.

* `approve` adds one approval by its key to each artifact and writes the same form back,
  which `produce --artifacts` reads; the issuer's signature still verifies;
* it refuses a private key file others may read, as every key loader does, before it
  writes anything;
* `verify` takes an artifact exactly when a stage with `require_signature` and
  `require_approvals: N` and the same trusted keys does: approvals counted by public key,
  never by the issuer's own key, one key counted once;
* a line that is not an artifact, or an artifact that does not verify, is exit status 1.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.core.artifact import Artifact
from processor.core.errors import SecurityError
from processor.security.approvals import approve
from processor.security.keys import ALLOW_READABLE_KEYS_ENV, generate, load_signing_key
from processor.security.policy import Keyring, SecurityConfig
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore
from processor.serde.jsonform import artifact_from_json, artifact_to_json


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_READABLE_KEYS_ENV, raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """shop (the issuer), alice and bob (approvers), each KEY_ID.key and KEY_ID.pub; the
    public keys also in trust/."""
    directory = tmp_path / "keys"
    trust = tmp_path / "trust"
    trust.mkdir()
    directory.mkdir()
    for key_id in ("shop", "alice", "bob"):
        files = generate("signing", key_id, directory)
        (trust / files.public.name).write_bytes(files.public.read_bytes())
    return directory


def orders(keys: Path, count: int = 3) -> list[Artifact]:
    shop = load_signing_key(keys / "shop.key")
    return [sign(Artifact.new(json.dumps({"order": i, "item": "tea"}),
                              media_type="application/json",
                              meta={"order": i, "amount": 2.5, "tag": b"\x00\xff"}), shop)
            for i in range(count)]


def write_jsonl(path: Path, artifacts: list[Artifact]) -> Path:
    path.write_text("".join(artifact_to_json(a) + "\n" for a in artifacts), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[Artifact]:
    return [artifact_from_json(line) for line in path.read_text("utf-8").splitlines()]


# --- approve ---------------------------------------------------------------------------------


def test_approve_adds_one_approval_by_the_key_to_each_artifact(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    given = orders(keys)
    source = write_jsonl(tmp_path / "orders.jsonl", given)
    out = tmp_path / "approved.jsonl"
    assert main(["keys", "approve", "--key", str(keys / "alice.key"), "--in", str(source),
                 "--out", str(out)]) == 0
    assert capsys.readouterr().err == "processor keys approve: 3 artifacts approved by 'alice'\n"
    approved = read_jsonl(out)
    store = TrustStore.load([tmp_path / "trust"])
    assert len(approved) == len(given)
    for before, after in zip(given, approved, strict=True):
        assert after._replace(approvals=()) == before  # nothing else changed
        assert [a.key_id for a in after.approvals] == ["alice"]
        verify(after, store)  # the issuer's signature still verifies


def test_approvals_pipe_through_standard_input_and_output(
        keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    text = "".join(artifact_to_json(a) + "\n" for a in orders(keys, 2))
    for key_id in ("alice", "bob"):
        monkeypatch.setattr("sys.stdin", io.StringIO(text))
        assert main(["keys", "approve", "--key", str(keys / f"{key_id}.key")]) == 0
        text = capsys.readouterr().out
    approved = [artifact_from_json(line) for line in text.splitlines()]
    assert [[a.key_id for a in x.approvals] for x in approved] == [["alice", "bob"]] * 2
    keyring = Keyring.load(SecurityConfig(trust_store=(str(tmp_path / "trust"),),
                                          require_approvals=2))
    for artifact in approved:
        assert keyring.inbound(artifact) == artifact


def test_approve_refuses_a_key_others_may_read_and_writes_nothing(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "orders.jsonl", orders(keys))
    out = tmp_path / "approved.jsonl"
    out.write_text("kept\n")
    (keys / "alice.key").chmod(0o644)
    assert main(["keys", "approve", "--key", str(keys / "alice.key"), "--in", str(source),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("processor keys: error: ")
    assert "0644" in err and f"chmod 600 {keys / 'alice.key'}" in err
    assert out.read_text() == "kept\n"


def test_approve_refuses_a_sealing_key_and_the_same_file_in_and_out(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "orders.jsonl", orders(keys))
    sealing = generate("sealing", "billing", tmp_path)
    assert main(["keys", "approve", "--key", str(sealing.private), "--in", str(source)]) == 1
    assert "signing needs Ed25519" in capsys.readouterr().err
    assert main(["keys", "approve", "--key", str(keys / "alice.key"), "--in", str(source),
                 "--out", str(source)]) == 1
    assert "the same file" in capsys.readouterr().err
    assert len(read_jsonl(source)) == 3


def test_approve_reports_a_line_that_is_not_an_artifact_and_goes_on(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = (artifact_to_json(a) for a in orders(keys, 2))
    source = tmp_path / "orders.jsonl"
    source.write_text(f"{first}\nnot json\n\n{second}\n", encoding="utf-8")
    assert main(["keys", "approve", "--key", str(keys / "bob.key"), "--in", str(source)]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert "line 2 is not an artifact: not valid JSON" in captured.err
    assert "2 artifacts approved by 'bob', 1 lines skipped" in captured.err


def test_approving_its_own_artifact_warns_that_it_will_not_count(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "orders.jsonl", orders(keys, 1))
    assert main(["keys", "approve", "--key", str(keys / "shop.key"), "--in", str(source)]) == 0
    assert "is issued by 'shop'; an issuer's own approval does not count" in (
        capsys.readouterr().err)


# --- verify ----------------------------------------------------------------------------------


def approved_by(keys: Path, artifact: Artifact, *key_ids: str) -> Artifact:
    for key_id in key_ids:
        artifact = approve(artifact, load_signing_key(keys / f"{key_id}.key"))
    return artifact


def test_verify_reports_each_artifact_and_fails_if_any_is_refused(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = orders(keys, 4)
    given = [approved_by(keys, base[0], "alice", "bob"),
             approved_by(keys, base[1], "alice", "alice"),  # one key counts once
             approved_by(keys, base[2], "shop", "alice"),  # the issuer's own does not count
             approved_by(keys, base[3], "alice", "bob").with_meta("amount", 99.0)]
    source = write_jsonl(tmp_path / "approved.jsonl", given)
    trust = str(tmp_path / "trust")
    assert main(["keys", "verify", "--trusted-key", trust, "--require-approvals", "2",
                 "--in", str(source)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == (f"{given[0].id}: verified, signed by 'shop', 2 approval(s) counted: "
                        "alice, bob")
    assert lines[1].startswith(f"{given[1].id}: refused: ") and "counted once" in lines[1]
    assert lines[2].startswith(f"{given[2].id}: refused: ") and "issuer's own key" in lines[2]
    assert lines[3].startswith(f"{given[3].id}: refused: ") and "does not verify" in lines[3]
    assert captured.err == "processor keys verify: 1 verified, 3 refused\n"
    # One approval required: the first three pass, the changed one still does not.
    assert main(["keys", "verify", "--trusted-key", trust, "--require-approvals", "1",
                 "--in", str(source)]) == 1
    assert capsys.readouterr().err == "processor keys verify: 3 verified, 1 refused\n"
    write_jsonl(source, given[:3])
    assert main(["keys", "verify", "--trusted-key", trust, "--require-approvals", "1",
                 "--in", str(source)]) == 0


def test_verify_agrees_with_the_stage_policy(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = orders(keys, 1)[0]
    unsigned = Artifact.new("unsigned")
    cases = [base, unsigned, approved_by(keys, unsigned, "alice", "bob")] + [
        approved_by(keys, base, *who) for who in
        [("alice",), ("bob",), ("alice", "bob"), ("shop",), ("bob", "bob"), ("shop", "alice")]]
    source = write_jsonl(tmp_path / "cases.jsonl", cases)
    trust = str(tmp_path / "trust")
    for required in (0, 1, 2):
        for approvers in ((), ("alice",)):
            flags = [f for a in approvers for f in ("--approver", a)]
            main(["keys", "verify", "--trusted-key", trust, "--require-approvals",
                  str(required), "--format", "json", "--in", str(source), *flags])
            verdicts = [json.loads(line)["verified"]
                        for line in capsys.readouterr().out.splitlines()]
            keyring = Keyring.load(SecurityConfig(
                trust_store=(trust,), require_signature=True, require_approvals=required,
                require_approvals_from=approvers))
            expected = []
            for artifact in cases:
                try:
                    keyring.inbound(artifact)
                    expected.append(True)
                except SecurityError:
                    expected.append(False)
            assert verdicts == expected, (required, approvers)


def test_verify_takes_key_files_and_inline_keys_and_retired_keys(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = approved_by(keys, orders(keys, 1)[0], "alice")
    source = write_jsonl(tmp_path / "approved.jsonl", [artifact])
    assert main(["keys", "show", "--format", "json", str(keys / "alice.pub")]) == 0
    alice = json.loads(capsys.readouterr().out)["public"]
    flags = ["keys", "verify", "--trusted-key", str(keys / "shop.pub"),
             "--trusted-key", f"alice={alice}", "--require-approvals", "1",
             "--format", "json", "--in", str(source)]
    assert main(flags) == 0
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result == {"line": 1, "id": artifact.id, "issuer": "shop", "verified": True,
                      "error": None, "approvals": ["alice"], "not_counted": []}
    assert main([*flags, "--retired-key", "alice"]) == 1
    (result,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert result["not_counted"] == ["alice: retired key"]
    assert main([*flags, "--retired-key", "shop"]) == 1
    assert "signed by retired key 'shop'" in capsys.readouterr().out


def test_verify_refuses_a_trust_store_that_cannot_be_used(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "orders.jsonl", orders(keys, 1))
    empty = tmp_path / "empty"
    empty.mkdir()
    sealing = generate("sealing", "billing", tmp_path)
    (keys / "alice-again.pub").write_bytes((keys / "alice.pub").read_bytes())
    for given, why in [(str(empty), "no Ed25519 public key found"),
                       (str(tmp_path / "nowhere"), "no such file or directory"),
                       (str(sealing.public), "an X25519 (sealing) key"),
                       (str(keys), "is present under 2 ids")]:
        assert main(["keys", "verify", "--trusted-key", given, "--in", str(source)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("processor keys: error: ") and why in captured.err


def test_verify_fails_on_a_line_that_is_not_an_artifact(
        keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "orders.jsonl"
    source.write_text(artifact_to_json(orders(keys, 1)[0]) + '\n{"payload": 3, "checksum": '
                      '"00"}\n', encoding="utf-8")
    assert main(["keys", "verify", "--trusted-key", str(tmp_path / "trust"),
                 "--in", str(source)]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and ": verified, " in captured.out
    assert "line 2 is not an artifact" in captured.err
    assert captured.err.endswith("1 verified, 0 refused, 1 lines skipped\n")
