"""The trust store: the Ed25519 public keys whose signatures a stage accepts, by key id.

Keys come from

* directories of public key files, `KEY_ID.pub` (PEM or base64 of the raw key). A mounted
  Kubernetes secret is such a directory: its data keys become files, next to the
  `..data` and `..<timestamp>` entries the kubelet uses for atomic updates, which are
  skipped (every name starting with a dot is);
* inline keys, `KEY_ID -> base64` (the `trusted_keys` setting, which can be given by the
  environment variable `PROCESSOR_TRUSTED_KEYS=id=BASE64,...`, a flag or the YAML file).

Rotation keeps the old public key in the store while the new key signs, so artifacts
signed before the rotation still verify. A key id listed as retired (the
`retired_keys` setting) no longer verifies anything: an artifact it signed is refused,
whatever the signature, as is one signed by a key the store does not know.

A key is its public key, not its id: every rule holds by key. `load` refuses, with one
line naming the ids (`TrustStoreConflict`, so the stage does not start), a store in
which one public key is present under two ids (an approver could otherwise count twice,
or an issuer approve its own artifact under a second id), and so a retired key present
under an id that is not retired. Retiring an id retires its key: a store made in code
with such a key under another id refuses that id too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from processor.security.errors import KeyFileError, SignatureRefused, TrustStoreConflict
from processor.security.keys import (
    PUBLIC_SUFFIX,
    check_key_id,
    fingerprint,
    key_id_of,
    load_public,
    parse_public,
)

logger = logging.getLogger(__name__)


def raw(key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key: what a key is, whatever its id."""
    return key.public_bytes_raw()


@dataclass(frozen=True)
class TrustStore:
    """Trusted public keys by id, and the ids that are retired (whose keys are retired
    under every id)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=lambda: MappingProxyType({}))
    retired: frozenset[str] = frozenset()
    raw_keys: Mapping[str, bytes] = field(init=False, repr=False, compare=False)
    """The raw public key of each id: what approvals and retirement go by."""
    retired_keys: frozenset[bytes] = field(init=False, repr=False, compare=False)
    """The raw public keys of the retired ids."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
        raw_keys = {key_id: raw(key) for key_id, key in self.keys.items()}
        object.__setattr__(self, "raw_keys", MappingProxyType(raw_keys))
        object.__setattr__(self, "retired_keys", frozenset(
            public for key_id, public in raw_keys.items() if key_id in self.retired))

    def is_retired(self, key_id: str) -> bool:
        """Whether `key_id` is retired, or names a key that is retired under another id."""
        return key_id in self.retired or self.raw_keys.get(key_id) in self.retired_keys

    def key(self, key_id: str, *, what: str = "artifact") -> Ed25519PublicKey:
        """The public key of `key_id`; SignatureRefused if it is retired or unknown."""
        if self.is_retired(key_id):
            raise SignatureRefused(f"{what} signed by retired key {key_id!r}")
        found = self.keys.get(key_id)
        if found is None:
            raise SignatureRefused(f"{what} signed by unknown key id {key_id!r} (not in the "
                                   "trust store)")
        return found

    def trusts(self, key_id: str) -> bool:
        return key_id in self.keys and not self.is_retired(key_id)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, directories: Iterable[Path | str] = (),
             inline: Mapping[str, str] | None = None,
             retired: Iterable[str] = ()) -> TrustStore:
        """A store from directories of `KEY_ID.pub` files and inline keys; KeyFileError
        for a key id given twice with different keys, TrustStoreConflict for one key under
        two ids (see the module documentation)."""
        keys: dict[str, Ed25519PublicKey] = {}
        where: dict[str, str] = {}

        def add(key_id: str, key: Ed25519PublicKey, source: str) -> None:
            old = keys.get(key_id)
            if old is not None and old.public_bytes_raw() != key.public_bytes_raw():
                raise KeyFileError(f"key id {key_id!r} has two different keys: in "
                                   f"{where[key_id]} and in {source}")
            keys[key_id], where[key_id] = key, source

        for directory in directories:
            for path in public_key_files(Path(directory)):
                key = load_public(path)
                if not isinstance(key, Ed25519PublicKey):
                    logger.info("trust store: skipping %s, an X25519 (sealing) key", path)
                    continue
                add(key_id_of(path), key, str(path))
        for key_id, text in (inline or {}).items():
            source = f"trusted_keys.{key_id}"
            key = parse_public(text.encode("utf-8"), source)
            if not isinstance(key, Ed25519PublicKey):
                raise KeyFileError(f"{source}: an X25519 key; the trust store holds Ed25519 "
                                   "signing keys")
            add(check_key_id(key_id), key, source)
        retired_ids = frozenset(check_key_id(r) for r in retired)
        check_one_id_per_key(keys, retired_ids, where)
        return cls(keys, retired_ids)


def check_one_id_per_key(keys: Mapping[str, Ed25519PublicKey], retired: frozenset[str],
                         where: Mapping[str, str]) -> None:
    """TrustStoreConflict, one line naming the ids, when a public key is present under
    more than one id; a retired key under an id that is not retired is named as such."""
    ids: dict[bytes, list[str]] = {}
    for key_id, key in keys.items():
        ids.setdefault(raw(key), []).append(key_id)
    problems: list[str] = []
    for public, named in ids.items():
        if len(named) < 2:
            continue
        named.sort()
        given = ", ".join(f"{i!r} ({where[i]})" if i in where else repr(i) for i in named)
        gone = [i for i in named if i in retired]
        kept = [i for i in named if i not in retired]
        if gone and kept:
            problems.append(
                f"key {fingerprint(public)} is retired as {', '.join(map(repr, gone))} but "
                f"present under {', '.join(map(repr, kept))}, not retired (ids: {given})")
        else:
            problems.append(f"key {fingerprint(public)} is present under {len(named)} ids: "
                            f"{given}")
    if problems:
        raise TrustStoreConflict(
            f"trust store: {'; '.join(problems)}; give each public key one id (to retire "
            "a key, list its id in retired_keys and remove its other ids)")


def public_key_files(directory: Path) -> list[Path]:
    """The `*.pub` files of `directory` (following symbolic links), without the entries
    whose name starts with a dot (a Kubernetes secret mount's `..data` and the like)."""
    try:
        names = sorted(p.name for p in directory.iterdir())
    except OSError as exc:
        raise KeyFileError(f"trust store {directory}: cannot list it: {exc.strerror}") from None
    return [directory / name for name in names
            if not name.startswith(".") and name.endswith(PUBLIC_SUFFIX)
            and (directory / name).is_file()]
