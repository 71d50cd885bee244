"""`processor config check` reads the files `processor run` reads when it starts, so their
errors show before a run: the key files and trust store of the security settings
(`Keyring.load`) and the schema files (`schema_file`, `writer_schemas`), without a
connection to a broker or a schema registry. Each bad file is one line naming the setting
and where its value came from; every problem is reported at once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.security.keys import ALLOW_READABLE_KEYS_ENV, generate, public_info

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "processor" / "serde" / "schemas"
STAGE = "input_topic: in\ngroup: g\nhandlers: [validate]\nbootstrap_servers: k:9092\n"


@pytest.fixture(autouse=True)
def no_processor_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The tests' own environment only, and the temporary folder as the current one (the
    settings name files relative to it, as a stage's do)."""
    for name in list(os.environ):
        if name.startswith("PROCESSOR_") and name != "PROCESSOR_KAFKA_HOME":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """keys/: a signing key (signer), a sealing key (billing); trust/: signer.pub."""
    directory = tmp_path / "keys"
    directory.mkdir()
    signer = generate("signing", "signer", directory)
    generate("sealing", "billing", directory)
    (tmp_path / "trust").mkdir()
    shutil.copy(signer.public, tmp_path / "trust" / "signer.pub")
    return directory


def check(text: str, *flags: str) -> int:
    Path("stage.yaml").write_text(STAGE + text, encoding="utf-8")
    return main(["config", "check", "stage.yaml", *flags])


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    prefix = "processor config: error: "
    assert captured.err.startswith(prefix)
    return captured.err.removeprefix(prefix).splitlines()


# --- key files ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("keys")
def test_usable_keys_and_schemas_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(SCHEMA_DIR / "artifact.avsc", "reader.avsc")
    shutil.copy(SCHEMA_DIR / "artifact.v1.avsc", "old.avsc")
    assert check("sign_key: keys/signer.key\ntrust_store: [trust]\nrequire_approvals: 1\n"
                 "open_key: keys/billing.key\nseal_recipients: [keys/billing.pub]\n"
                 "schema_file: reader.avsc\nwriter_schemas: [old.avsc]\n") == 0
    assert capsys.readouterr().out.startswith("stage.yaml: valid\n")


@pytest.mark.usefixtures("keys")
def test_a_missing_key_file_is_one_line_naming_the_setting(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert check("sign_key: keys/nosuch.key\n") == 1
    assert error_lines(capsys) == [
        "sign_key: cannot read key file keys/nosuch.key: No such file or directory "
        "(from file stage.yaml)"]


@pytest.mark.usefixtures("keys")
def test_a_private_key_others_may_read_is_refused_as_run_refuses_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(ALLOW_READABLE_KEYS_ENV, raising=False)
    Path("keys/billing.key").chmod(0o640)
    monkeypatch.setenv("PROCESSOR_OPEN_KEY", "keys/billing.key")
    assert check("") == 1
    (line,) = error_lines(capsys)
    assert line.startswith("open_key: private key file keys/billing.key has mode 0640")
    assert "chmod 600 keys/billing.key" in line
    assert line.endswith("(from environment PROCESSOR_OPEN_KEY)")
    monkeypatch.setenv(ALLOW_READABLE_KEYS_ENV, "1")
    assert check("") == 0


@pytest.mark.usefixtures("keys")
def test_a_key_of_the_wrong_kind_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("", "--sign-key", "keys/billing.key", "--seal-for", "keys/signer.pub") == 1
    assert error_lines(capsys) == [
        "sign_key: keys/billing.key holds an X25519 (sealing) key; signing needs Ed25519 "
        "(from flag --sign-key)",
        "seal_recipients: keys/signer.pub holds an Ed25519 (signing) key; sealing needs "
        "X25519 (from flag --seal-for)"]


def test_trust_store_problems_name_their_settings(
        keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check("trust_store: [nowhere]\nrequire_signature: true\n") == 1
    assert error_lines(capsys) == [
        "trust_store: trust store nowhere: cannot list it: No such file or directory "
        "(from file stage.yaml)"]
    assert check("trusted_keys: {alice: not-a-key}\n") == 1
    (line,) = error_lines(capsys)
    assert line.startswith("trusted_keys.alice: expected a PEM public key")
    # One key under two ids, one in the directory and one inline: the two settings together.
    public = public_info(keys / "signer.pub").public
    assert check(f"trust_store: [trust]\ntrusted_keys: {{other: {public}}}\n") == 1
    (line,) = error_lines(capsys)
    assert line.startswith("trust_store, trusted_keys: trust store: key ")
    assert "is present under 2 ids" in line and line.endswith("(from file stage.yaml)")


def test_a_policy_without_trusted_keys_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("require_approvals: 2\n") == 1
    (line,) = error_lines(capsys)
    assert line.startswith("require_signature/require_approvals need trusted keys")


def test_a_short_pseudonym_key_names_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("pseudonym_key: short\n") == 1
    (line,) = error_lines(capsys)
    assert line.startswith("pseudonym_key: ") and line.endswith("(from file stage.yaml)")
    assert "short" not in line.removeprefix("pseudonym_key: ")  # a secret is never shown


# --- schema files -------------------------------------------------------------------------------


def test_bad_schema_files_name_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    Path("broken.avsc").write_text("{not json", encoding="utf-8")
    Path("other.avsc").write_text('{"type": "record", "name": "Other", "fields": []}',
                                  encoding="utf-8")
    assert check("schema_file: other.avsc\n", "--writer-schema", "broken.avsc") == 1
    lines = error_lines(capsys)
    assert len(lines) == 2
    assert lines[0].startswith("schema_file: an artifact schema must be a record whose "
                               "fields begin with id, ")
    assert lines[0].endswith("(from file stage.yaml)")
    assert lines[1].startswith("writer_schemas: schema file broken.avsc is not JSON: ")
    assert lines[1].endswith("(from flag --writer-schema)")
    assert check("schema_file: nowhere.avsc\n") == 1
    assert error_lines(capsys) == [
        "schema_file: schema file nowhere.avsc: No such file or directory "
        "(from file stage.yaml)"]


def test_no_registry_is_contacted(capsys: pytest.CaptureFixture[str]) -> None:
    """The registry's URL is a setting like any other: config check reads the files only."""
    assert check("schema_registry_url: http://127.0.0.1:9\n") == 0
    assert "stage.yaml: valid" in capsys.readouterr().out


@pytest.mark.usefixtures("keys")
def test_every_problem_is_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("handlers: [nosuchmod_x:fn]\nsign_key: keys/nosuch.key\n"
                 "open_key: keys/signer.key\nschema_file: nowhere.avsc\n") == 1
    lines = error_lines(capsys)
    assert [line.split(":")[0] for line in lines] == [
        "handlers", "sign_key", "open_key", "schema_file"]
