"""Key files: Ed25519 keys sign, X25519 keys seal. Every key has an id.

A key pair is two PEM files named after its key id: `KEY_ID.key`, the private key
(PKCS #8, unencrypted, written with mode 0600), and `KEY_ID.pub`, the public key
(SubjectPublicKeyInfo). The key id is the file's name without its suffix, so a key keeps
its id wherever the file is copied or mounted (a Kubernetes secret whose data keys are
`KEY_ID.pub` mounts as exactly those files). An id is 1 to 64 letters, digits, `.`, `_`
or `-`, starting with a letter or digit.

A public key can also be given inline (settings, environment) as the base64 of its raw
32 bytes, which is what `processor keys show` prints.

A private key file that its group or others may access (any of the mode bits 0o077) is
refused, unless the environment sets `PROCESSOR_ALLOW_READABLE_KEYS=1`. Key files are
written without following a symbolic link: a link where a key file goes is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from processor.security.errors import KeyFileError

logger = logging.getLogger(__name__)

KeyKind = Literal["signing", "sealing"]
KINDS: Final[tuple[KeyKind, ...]] = ("signing", "sealing")
PRIVATE_SUFFIX: Final = ".key"
PUBLIC_SUFFIX: Final = ".pub"
PRIVATE_MODE: Final = 0o600
PUBLIC_MODE: Final = 0o644
ALLOW_READABLE_KEYS_ENV: Final = "PROCESSOR_ALLOW_READABLE_KEYS"
"""Set to 1 (or true, yes, on), a private key file its group or others may read is used,
with a warning, instead of refused."""
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def check_key_id(key_id: str) -> str:
    """`key_id` if it is a valid key id; KeyFileError otherwise."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r} is not allowed: use 1 to 64 letters, digits, "
                           "'.', '_' or '-', starting with a letter or digit")
    return key_id


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private Ed25519 key and its id: signs artifacts and approvals."""

    id: str
    private: Ed25519PrivateKey

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(*_RAW)

    def __repr__(self) -> str:
        return f"SigningKey(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class OpeningKey:
    """A private X25519 key and its id: opens payloads sealed for that id."""

    id: str
    private: X25519PrivateKey

    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(*_RAW)

    def __repr__(self) -> str:
        return f"OpeningKey(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class RecipientKey:
    """A public X25519 key and its id: a recipient payloads are sealed for."""

    id: str
    public: X25519PublicKey

    def public_bytes(self) -> bytes:
        return self.public.public_bytes(*_RAW)


@dataclass(frozen=True, slots=True)
class KeyFiles:
    private: Path
    public: Path


def new_signing_key(key_id: str) -> SigningKey:
    return SigningKey(check_key_id(key_id), Ed25519PrivateKey.generate())


def new_opening_key(key_id: str) -> OpeningKey:
    return OpeningKey(check_key_id(key_id), X25519PrivateKey.generate())


def recipient_of(key: OpeningKey) -> RecipientKey:
    return RecipientKey(key.id, key.private.public_key())


def fingerprint(public: bytes) -> str:
    """A short, stable name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


def _refuse_link(path: Path) -> None:
    if os.path.islink(path):
        raise KeyFileError(f"{path} is a symbolic link (to {os.readlink(path)}); refusing to "
                           "write a key through it: remove the link or choose another --dir")


def _write_new(path: Path, data: bytes, mode: int, *, force: bool, exact: bool) -> None:
    """Write `data` to `path`, never through a symbolic link (`O_NOFOLLOW`): a new file,
    or with `force` an existing regular file with a single link, truncated first. `exact`:
    the file's mode is `mode` whatever the umask."""
    _refuse_link(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key (use --force)") from None
    except OSError as exc:
        if os.path.islink(path):  # made between the check and the open
            _refuse_link(path)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"{path} is not a regular file; refusing to write a key to it")
        if info.st_nlink > 1:
            raise KeyFileError(f"{path} has {info.st_nlink} hard links; refusing to overwrite "
                               "a file shared with other names: remove it first")
        os.ftruncate(fd, 0)
        if exact:
            os.fchmod(fd, mode)
        os.write(fd, data)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def write_private(path: Path, key: Ed25519PrivateKey | X25519PrivateKey, *,
                  force: bool = False) -> None:
    """Write a private key as PEM, readable and writable by its owner only (0600).

    The file is created with mode 0600 (never wider, whatever the umask), and an existing
    file is refused unless `force`. A symbolic link at `path` is refused, never followed."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_new(path, pem, PRIVATE_MODE, force=force, exact=True)


def write_public(path: Path, key: Ed25519PublicKey | X25519PublicKey, *,
                 force: bool = False) -> None:
    """Write a public key as PEM (mode 0644 less the umask); as `write_private` for an
    existing file or a symbolic link."""
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(path, pem, PUBLIC_MODE, force=force, exact=False)


def generate(kind: KeyKind, key_id: str, directory: Path, *, force: bool = False) -> KeyFiles:
    """A new key pair of `kind` written to `directory` as KEY_ID.key and KEY_ID.pub.

    Nothing is written when either file is a symbolic link, or exists without `force`."""
    check_key_id(key_id)
    files = KeyFiles(directory / f"{key_id}{PRIVATE_SUFFIX}",
                     directory / f"{key_id}{PUBLIC_SUFFIX}")
    for path in (files.private, files.public):
        _refuse_link(path)
        if not force and path.exists():
            raise KeyFileError(f"{path} exists; refusing to overwrite a key (use --force)")
    private = Ed25519PrivateKey.generate() if kind == "signing" else X25519PrivateKey.generate()
    write_private(files.private, private, force=force)
    write_public(files.public, private.public_key(), force=force)
    return files


def key_id_of(path: Path) -> str:
    """The key id a key file stands for: its name without the suffix."""
    name = path.name
    for suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX, ".pem"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return check_key_id(name)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None


def readable_keys_allowed(env: Mapping[str, str] | None = None) -> bool:
    """Whether `PROCESSOR_ALLOW_READABLE_KEYS` (in `env`, default the process's
    environment) allows private key files that others may read."""
    value = (os.environ if env is None else env).get(ALLOW_READABLE_KEYS_ENV, "")
    return value.strip().lower() in _TRUE


def _read_private(path: Path) -> tuple[bytes, int]:
    """The bytes and the mode of a private key file, the mode read from the file opened
    (no race between the check and the read)."""
    try:
        with path.open("rb") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            return fh.read(), mode
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None


def _check_mode(path: Path, mode: int, allow_readable: bool | None) -> None:
    """A private key file its group or others may access is refused, unless allowed
    (`allow_readable`, default `readable_keys_allowed()`), then used with a warning."""
    if mode & 0o077:
        if not (readable_keys_allowed() if allow_readable is None else allow_readable):
            raise KeyFileError(
                f"private key file {path} has mode {mode:04o}: its group or others may read "
                f"it; run `chmod 600 {path}`, or set {ALLOW_READABLE_KEYS_ENV}=1 to use it "
                "anyway")
        logger.warning("private key file %s has mode %04o, readable by others; used because "
                       "%s is set", path, mode, ALLOW_READABLE_KEYS_ENV)


def load_private(path: Path, *, allow_readable: bool | None = None) -> SigningKey | OpeningKey:
    """The private key in `path` with its id. A file whose mode lets its group or others
    in (0o077) is refused with `KeyFileError` unless `allow_readable` (by default: the
    environment sets `PROCESSOR_ALLOW_READABLE_KEYS=1`), then used with a warning."""
    data, mode = _read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    _check_mode(path, mode, allow_readable)
    key_id = key_id_of(path)
    if isinstance(key, Ed25519PrivateKey):
        return SigningKey(key_id, key)
    if isinstance(key, X25519PrivateKey):
        return OpeningKey(key_id, key)
    raise KeyFileError(f"{path} holds a {type(key).__name__}; expected Ed25519 or X25519")


def load_signing_key(path: Path) -> SigningKey:
    key = load_private(path)
    if not isinstance(key, SigningKey):
        raise KeyFileError(f"{path} holds an X25519 (sealing) key; signing needs Ed25519")
    return key


def load_opening_key(path: Path) -> OpeningKey:
    key = load_private(path)
    if not isinstance(key, OpeningKey):
        raise KeyFileError(f"{path} holds an Ed25519 (signing) key; opening needs X25519")
    return key


def parse_public(data: bytes, where: str) -> Ed25519PublicKey | X25519PublicKey:
    """A public key from PEM, or from the base64 of its raw 32 bytes (Ed25519 assumed
    for raw bytes, which carry no kind)."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as exc:
            raise KeyFileError(f"{where}: not a PEM public key: {exc}") from None
        if isinstance(key, Ed25519PublicKey | X25519PublicKey):
            return key
        raise KeyFileError(f"{where}: holds a {type(key).__name__}; expected Ed25519 or X25519")
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_"
                               if b"-" in text or b"_" in text else None, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{where}: expected a PEM public key or the base64 of a raw "
                           "32-byte key")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public(path: Path) -> Ed25519PublicKey | X25519PublicKey:
    return parse_public(_read(path), str(path))


def load_recipient(path: Path) -> RecipientKey:
    """The X25519 public key in `path` (or the public half of a private key file)."""
    data = _read(path)
    if b"PRIVATE KEY" in data:
        private = load_private(path)
        if isinstance(private, OpeningKey):
            return recipient_of(private)
        raise KeyFileError(f"{path} holds an Ed25519 (signing) key; sealing needs X25519")
    key = parse_public(data, str(path))
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(f"{path} holds an Ed25519 (signing) key; sealing needs X25519")
    return RecipientKey(key_id_of(path), key)


@dataclass(frozen=True, slots=True)
class PublicInfo:
    """What `processor keys show` prints: never anything secret."""

    id: str
    kind: KeyKind
    public: str
    """The raw public key, base64."""
    fingerprint: str
    file: Path
    private_file: bool


def public_info(path: Path) -> PublicInfo:
    """The public facts of a key file, private or public."""
    data = _read(path)
    private_file = b"PRIVATE KEY" in data
    if private_file:
        private = load_private(path)
        raw = private.public_bytes()
        kind: KeyKind = "signing" if isinstance(private, SigningKey) else "sealing"
    else:
        key = parse_public(data, str(path))
        raw = key.public_bytes(*_RAW)
        kind = "signing" if isinstance(key, Ed25519PublicKey) else "sealing"
    return PublicInfo(key_id_of(path), kind, base64.b64encode(raw).decode("ascii"),
                      fingerprint(raw), path, private_file)
