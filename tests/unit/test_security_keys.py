"""Key files, the trust store and `processor keys`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from processor.cli.main import main
from processor.security.errors import KeyFileError, SignatureRefused
from processor.security.keys import (
    OpeningKey,
    SigningKey,
    generate,
    load_opening_key,
    load_private,
    load_recipient,
    load_signing_key,
    public_info,
)
from processor.security.truststore import TrustStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        files = generate("signing", "signer-1", tmp_path)
    finally:
        os.umask(old)
    assert files.private == tmp_path / "signer-1.key" and mode(files.private) == 0o600
    assert files.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = load_private(files.private)
    assert isinstance(key, SigningKey) and key.id == "signer-1"
    assert "PRIVATE" not in repr(key) and "signer-1" in repr(key)


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    generate("sealing", "k", tmp_path)
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate("sealing", "k", tmp_path)
    assert (tmp_path / "k.key").read_bytes() == before
    (tmp_path / "k.key").chmod(0o644)
    generate("sealing", "k", tmp_path, force=True)
    assert (tmp_path / "k.key").read_bytes() != before and mode(tmp_path / "k.key") == 0o600


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "x" * 65, "spaced id", "-lead"])
def test_bad_key_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(KeyFileError, match="not allowed"):
        generate("signing", bad, tmp_path)


def test_kinds_are_checked_where_keys_are_used(tmp_path: Path) -> None:
    generate("signing", "s", tmp_path)
    generate("sealing", "o", tmp_path)
    assert isinstance(load_opening_key(tmp_path / "o.key"), OpeningKey)
    assert load_recipient(tmp_path / "o.pub").id == "o"
    assert load_recipient(tmp_path / "o.key").id == "o"  # the public half
    with pytest.raises(KeyFileError, match="signing needs Ed25519"):
        load_signing_key(tmp_path / "o.key")
    with pytest.raises(KeyFileError, match="opening needs X25519"):
        load_opening_key(tmp_path / "s.key")
    with pytest.raises(KeyFileError, match="sealing needs X25519"):
        load_recipient(tmp_path / "s.pub")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private(tmp_path / "junk.key")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private(tmp_path / "missing.key")


def test_trust_store_from_a_directory_inline_keys_and_retired_ids(tmp_path: Path) -> None:
    generate("signing", "a", tmp_path)
    generate("signing", "b", tmp_path)
    generate("sealing", "box", tmp_path)  # skipped: not a signing key
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inline = {"c": public_info(generate("signing", "c", elsewhere).public).public}
    store = TrustStore.load([tmp_path], inline, retired=["b"])
    assert sorted(store.keys) == ["a", "b", "c"]
    assert store.trusts("a") and store.trusts("c") and not store.trusts("b")
    with pytest.raises(SignatureRefused, match="retired key 'b'"):
        store.key("b")
    with pytest.raises(SignatureRefused, match="unknown key id 'z'"):
        store.key("z")


def test_trust_store_from_a_mounted_kubernetes_secret(tmp_path: Path) -> None:
    """The kubelet's layout: the data in a timestamped directory, `..data` pointing at
    it, and one symbolic link per data key."""
    keys = tmp_path / "made"
    keys.mkdir()
    generate("signing", "orders-2026-11", keys)
    mount = tmp_path / "mount"
    data = mount / "..2026_11_27_10_00_00.123456789"
    data.mkdir(parents=True)
    (data / "orders-2026-11.pub").write_bytes((keys / "orders-2026-11.pub").read_bytes())
    (mount / "..data").symlink_to(data.name)
    (mount / "orders-2026-11.pub").symlink_to("..data/orders-2026-11.pub")
    store = TrustStore.load([mount])
    assert list(store.keys) == ["orders-2026-11"]


def test_trust_store_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot list it"):
        TrustStore.load([tmp_path / "missing"])
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    generate("signing", "same", one)
    generate("signing", "same", two)
    with pytest.raises(KeyFileError, match="two different keys"):
        TrustStore.load([one, two])
    with pytest.raises(KeyFileError, match="base64 of a raw 32-byte key"):
        TrustStore.load([], {"x": "bm90IGEga2V5"})


def test_keys_cli_generate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--id", "signer", "--dir", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    private = tmp_path / "k" / "signer.key"
    assert mode(private) == 0o600 and "signer.pub" in out
    secret_body = "".join(private.read_text().splitlines()[1:-1])
    assert secret_body not in out
    assert main(["keys", "show", "--format", "json", str(private),
                 str(tmp_path / "k" / "signer.pub")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["signer", "signer"]
    assert rows[0]["public"] == rows[1]["public"] and rows[0]["private_file"] is True
    assert rows[0]["kind"] == "signing" and secret_body not in json.dumps(rows)
    # The public key `show` prints is what trusted_keys takes.
    assert "signer" in TrustStore.load([], {"signer": rows[0]["public"]}).keys
    assert main(["keys", "generate", "--id", "signer", "--dir", str(tmp_path / "k")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keys_cli_default_id_is_dated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--type", "sealing", "--dir", str(tmp_path)]) == 0
    (made,) = tmp_path.glob("sealing-*.key")
    assert isinstance(load_private(made), OpeningKey)
