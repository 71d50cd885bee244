"""Key files and secrets on the local machine: private keys others may read are refused,
`keys generate --force` never writes through a symbolic link, and every secret setting
has a file form that the help prefers to the flag."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.core.errors import ConfigError
from processor.ops.secrets import read_secret_file, secret_from_env
from processor.ops.settings import SECRET_KEYS, add_run_arguments, is_known_env_var, load_config
from processor.security.errors import KeyFileError
from processor.security.keys import (
    ALLOW_READABLE_KEYS_ENV,
    SigningKey,
    generate,
    load_private,
    load_recipient,
    public_info,
)

MINIMAL = {"PROCESSOR_INPUT_TOPIC": "in", "PROCESSOR_GROUP": "g",
           "PROCESSOR_HANDLERS": "verify", "PROCESSOR_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
SECRET = "pseudonym-key-from-a-file-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_READABLE_KEYS_ENV, raising=False)


# --- private keys others may read ----------------------------------------------------------


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize("readable", [0o640, 0o644, 0o604, 0o660])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, readable: int) -> None:
    files = generate("signing", "signer", tmp_path)
    files.private.chmod(readable)
    with pytest.raises(KeyFileError) as refused:
        load_private(files.private)
    message = str(refused.value)
    assert "\n" not in message
    assert str(files.private) in message and f"{readable:04o}" in message
    assert f"chmod 600 {files.private}" in message
    assert f"{ALLOW_READABLE_KEYS_ENV}=1" in message


@pytest.mark.usefixtures("no_override")
def test_every_reader_of_a_private_key_refuses_it(tmp_path: Path) -> None:
    sealing = generate("sealing", "opener", tmp_path)
    sealing.private.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_recipient(sealing.private)
    with pytest.raises(KeyFileError, match="chmod 600"):
        public_info(sealing.private)
    public_info(sealing.public)  # a public key file may be read by anyone


@pytest.mark.usefixtures("no_override")
def test_the_cli_names_the_file_mode_and_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = generate("signing", "signer", tmp_path)
    files.private.chmod(0o644)
    assert main(["keys", "show", str(files.private)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("processor keys: error: ")
    assert "0644" in err and f"chmod 600 {files.private}" in err and ALLOW_READABLE_KEYS_ENV in err


def test_the_override_uses_a_readable_key_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    files = generate("signing", "signer", tmp_path)
    files.private.chmod(0o640)
    monkeypatch.setenv(ALLOW_READABLE_KEYS_ENV, "1")
    key = load_private(files.private)
    assert isinstance(key, SigningKey) and key.id == "signer"
    assert "0640" in caplog.text and ALLOW_READABLE_KEYS_ENV in caplog.text
    monkeypatch.setenv(ALLOW_READABLE_KEYS_ENV, "0")
    with pytest.raises(KeyFileError, match="0640"):
        load_private(files.private)
    assert isinstance(load_private(files.private, allow_readable=True), SigningKey)


@pytest.mark.usefixtures("no_override")
def test_a_private_key_of_mode_0600_or_0400_is_used(tmp_path: Path) -> None:
    files = generate("signing", "signer", tmp_path)
    assert isinstance(load_private(files.private), SigningKey)
    files.private.chmod(0o400)
    assert isinstance(load_private(files.private), SigningKey)


def test_the_override_is_a_known_variable() -> None:
    assert is_known_env_var(ALLOW_READABLE_KEYS_ENV)
    config = load_config(None, {**MINIMAL, ALLOW_READABLE_KEYS_ENV: "1"}, {})
    assert config.name == "g"


# --- keys generate and symbolic links -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".key", ".pub"])
def test_generate_force_refuses_a_symbolic_link_and_leaves_its_target(
        tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "generate", "--id", "signer", "--dir", str(keys)]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not a key\n")
    victim.chmod(0o644)
    link = keys / f"signer{suffix}"
    link.unlink()
    link.symlink_to(victim)
    before = {p.name: p.read_bytes() for p in keys.iterdir() if not p.is_symlink()}
    capsys.readouterr()
    assert main(["keys", "generate", "--id", "signer", "--dir", str(keys), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and str(link) in err
    assert victim.read_bytes() == b"not a key\n" and mode(victim) == 0o644
    assert link.is_symlink()
    # Nothing was written: the other file of the pair is unchanged too.
    assert {p.name: p.read_bytes() for p in keys.iterdir() if not p.is_symlink()} == before


def test_a_dangling_symbolic_link_is_refused_too(tmp_path: Path) -> None:
    link = tmp_path / "signer.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    for force in (False, True):
        with pytest.raises(KeyFileError, match="symbolic link"):
            generate("signing", "signer", tmp_path, force=force)
    assert not (tmp_path / "elsewhere.key").exists()


def test_generate_force_refuses_a_hard_link(tmp_path: Path) -> None:
    files = generate("signing", "signer", tmp_path)
    other = tmp_path / "other-name"
    os.link(files.private, other)
    before = other.read_bytes()
    with pytest.raises(KeyFileError, match="hard links"):
        generate("signing", "signer", tmp_path, force=True)
    assert other.read_bytes() == before


def test_generate_force_still_replaces_regular_files(tmp_path: Path) -> None:
    files = generate("signing", "signer", tmp_path)
    before = files.private.read_bytes(), files.public.read_bytes()
    generate("signing", "signer", tmp_path, force=True)
    assert (files.private.read_bytes(), files.public.read_bytes()) != before
    assert mode(files.private) == 0o600


# --- secrets from files ----------------------------------------------------------------------


def run_flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    flags = vars(parser.parse_args(list(argv)))
    flags.pop("config")
    return flags


def test_the_secret_settings_each_have_a_file_form() -> None:
    assert set(SECRET_KEYS) == {"pseudonym_key", "schema_registry_password"}
    for name in ("PROCESSOR_PSEUDONYM_KEY_FILE", "PROCESSOR_SCHEMA_REGISTRY_PASSWORD_FILE"):
        assert is_known_env_var(name)


def test_a_secret_from_the_file_an_environment_variable_names(tmp_path: Path) -> None:
    secret = tmp_path / "pseudonym"
    secret.write_text(SECRET + "\n")
    config = load_config(None, {**MINIMAL, "PROCESSOR_PSEUDONYM_KEY_FILE": str(secret)}, {})
    assert config.pseudonym_key is not None
    assert config.pseudonym_key.get_secret_value() == SECRET
    assert config.sources["pseudonym_key"] == "environment PROCESSOR_PSEUDONYM_KEY_FILE"
    assert SECRET not in config.describe()


def test_a_secret_from_the_file_a_flag_names(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-password\r\n")
    key = tmp_path / "pseudonym"
    key.write_text(SECRET)
    config = load_config(None, MINIMAL, run_flags(
        "--schema-registry-password-file", str(secret), "--pseudonym-key-file", str(key)))
    assert config.schema_registry_password is not None
    assert config.schema_registry_password.get_secret_value() == "s3cret-password"
    assert config.pseudonym_key is not None
    assert config.pseudonym_key.get_secret_value() == SECRET
    assert config.sources["pseudonym_key"] == "flag --pseudonym-key-file"


def test_a_flag_file_wins_over_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym"
    key.write_text(SECRET + "\n")
    config = load_config(None, {**MINIMAL, "PROCESSOR_PSEUDONYM_KEY": "x" * 20},
                         run_flags("--pseudonym-key-file", str(key)))
    assert config.pseudonym_key is not None
    assert config.pseudonym_key.get_secret_value() == SECRET


def test_both_forms_in_one_source_or_an_unreadable_file_are_errors(tmp_path: Path) -> None:
    key = tmp_path / "pseudonym"
    key.write_text(SECRET)
    with pytest.raises(ConfigError, match="PROCESSOR_PSEUDONYM_KEY or "
                                          "PROCESSOR_PSEUDONYM_KEY_FILE, not both"):
        load_config(None, {**MINIMAL, "PROCESSOR_PSEUDONYM_KEY": SECRET,
                           "PROCESSOR_PSEUDONYM_KEY_FILE": str(key)}, {})
    with pytest.raises(ConfigError) as missing:
        load_config(None, MINIMAL, run_flags("--pseudonym-key-file", str(tmp_path / "nope")))
    assert "pseudonym_key: cannot read" in str(missing.value)
    assert "flag --pseudonym-key-file" in str(missing.value)


def test_read_secret_file_strips_the_trailing_line_break(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"  spaced secret \n\n")
    assert read_secret_file(path) == "  spaced secret "
    env = {"PROCESSOR_SCHEMA_REGISTRY_PASSWORD_FILE": str(path)}
    assert secret_from_env(env, "PROCESSOR_SCHEMA_REGISTRY_PASSWORD") == "  spaced secret "
    assert secret_from_env({}, "PROCESSOR_SCHEMA_REGISTRY_PASSWORD") is None
    with pytest.raises(ValueError, match="not both"):
        secret_from_env({**env, "PROCESSOR_SCHEMA_REGISTRY_PASSWORD": "x"},
                        "PROCESSOR_SCHEMA_REGISTRY_PASSWORD")


def test_run_help_prefers_the_file_forms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, env in (("--pseudonym-key", "PROCESSOR_PSEUDONYM_KEY"),
                      ("--schema-registry-password", "PROCESSOR_SCHEMA_REGISTRY_PASSWORD")):
        assert f"{flag}-file FILE" in text
        assert f"prefer {flag}-file or the environment" in text
        assert f"prefer it to {flag}:" in text
        assert f"{env}_FILE" in text
    assert "readable by other local users" in text
