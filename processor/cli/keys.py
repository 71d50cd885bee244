"""`processor keys generate | show | approve | verify`: the key files of artifact signing
and sealing, and the approvals workflow without Python.

`generate` writes a key pair named after its key id: KEY_ID.key, the private key, with
mode 0600, and KEY_ID.pub, the public key to hand to the stages that verify (signing
keys) or seal for it (sealing keys). `show` prints what is public about a key file,
private or public: its id, kind, raw public key (base64, the form `trusted_keys` takes)
and fingerprint; never the private key.

`approve` and `verify` read artifacts in the JSON form `processor tail` prints, one a
line (`processor.serde.jsonform`). `approve` adds one approval by a signing key to each
(`approvals.approve`) and writes them in the same form, for `processor produce
--artifacts`. `verify` says of each whether it passes the checks a stage with
`require_signature` and `require_approvals: N` makes (`policy.Keyring.inbound`: the
signature, a present Merkle root, the approvals counted by public key), and exits 1 if
any does not. See docs/security.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from processor.cli.common import Subcommands, command_parser
from processor.core.artifact import Artifact
from processor.core.errors import ConfigError, InvalidArtifact, ProcessorError, SecurityError
from processor.security.keys import (
    KINDS,
    KeyKind,
    generate,
    key_id_of,
    load_public,
    load_signing_key,
    public_info,
)
from processor.security.truststore import TrustStore


def add_parsers(sub: Subcommands) -> None:
    keys = command_parser(
        sub, "keys", help="generate or show the keys that sign and seal artifacts; "
        "approve and verify artifacts",
        description="Key files for artifact security (docs/security.md). A signing key "
        "(Ed25519) signs artifacts and approvals; stages verify with its public key in their "
        "trust store. A sealing key (X25519) opens payloads sealed for it; stages seal for "
        "its public key. A key's id is its file name without the suffix: KEY_ID.key (the "
        "private key, mode 0600) and KEY_ID.pub (the public key). `approve` and `verify` "
        "work on artifacts in the JSON form `processor tail` prints.",
        epilog="examples:\n"
        "  processor keys generate --id orders-signer-2026-11 --dir keys/\n"
        "  processor keys generate --type sealing --id billing --dir keys/\n"
        "  processor keys show keys/orders-signer-2026-11.pub\n"
        "  processor keys approve --key keys/alice.key --in orders.jsonl --out approved.jsonl\n"
        "  processor keys verify --trusted-key trust/ --require-approvals 2 --in approved.jsonl")
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = command_parser(
        actions, "generate", help="write a new key pair: KEY_ID.key (0600) and KEY_ID.pub",
        description="Generate a key pair and write it to --dir as KEY_ID.key (the private "
        "key, PEM PKCS #8, mode 0600: give it only to the stage that signs or opens with "
        "it) and KEY_ID.pub (the public key, PEM: give it to the stages that verify or "
        "seal). Prints the key id, the files and the public key; never the private key. "
        "An existing file is not overwritten unless --force is given. A private key file "
        "its group or others may read is refused wherever it is loaded (chmod 600 it, or "
        "set PROCESSOR_ALLOW_READABLE_KEYS=1).",
        epilog="examples:\n"
        "  processor keys generate --id orders-signer-2026-11 --dir keys/\n"
        "  processor keys generate --type sealing --id billing --dir /run/secrets/keys")
    gen.add_argument("--type", choices=KINDS, default="signing",
                     help="signing (Ed25519: signatures, approvals) or sealing (X25519: "
                     "sealed payloads); default signing")
    gen.add_argument("--id", metavar="KEY_ID", default=None,
                     help="the key id (letters, digits, '.', '_', '-'); default TYPE-"
                     "YYYYMMDD-HHMMSS (UTC), which tells keys apart across rotations")
    gen.add_argument("--dir", metavar="DIR", type=Path, default=Path("."),
                     help="directory to write the files to (created if missing; default .)")
    gen.add_argument("--force", action="store_true",
                     help="overwrite existing key files of the same id (regular files only: "
                     "a symbolic link is refused, never followed)")
    gen.set_defaults(func=cmd_generate)
    show = command_parser(
        actions, "show", help="print the public facts of key files (never a private key)",
        description="Print the key id, kind (signing or sealing), public key (base64 of "
        "the raw 32 bytes, the form the trusted_keys setting takes) and fingerprint "
        "(the first 16 hex digits of the public key's SHA-256) of each key file. A private "
        "key file shows its public half only.",
        epilog="examples:\n"
        "  processor keys show keys/orders-signer-2026-11.pub\n"
        "  processor keys show --format json keys/*.pub")
    show.add_argument("files", nargs="+", metavar="FILE", type=Path,
                      help="a key file, KEY_ID.key or KEY_ID.pub")
    show.add_argument("--format", choices=("text", "json"), default="text",
                      help="text (default) or one JSON object a line")
    show.set_defaults(func=cmd_show)
    _add_approve(actions)
    _add_verify(actions)


def _add_approve(actions: Subcommands) -> None:
    approve = command_parser(
        actions, "approve", help="add an approval by a signing key to artifacts (JSON lines)",
        description="Read artifacts in the JSON form `processor tail` prints, one a line, "
        "add one approval by the signing key --key to each (an Ed25519 signature over the "
        "fields the issuer's signature covers and the approval's time), and write them in "
        "the same form, which `processor produce --artifacts` reads back. The issuer's "
        "signature stays valid. The key's id is its file name without .key; the stages "
        "that count approvals need its public key in their trust store. A private key file "
        "its group or others may read is refused (chmod 600 it, or set "
        "PROCESSOR_ALLOW_READABLE_KEYS=1). A line that is not an artifact is reported on "
        "stderr and not written; the exit status is then 1.",
        epilog="examples:\n"
        "  processor keys approve --key keys/alice.key --in orders.jsonl --out approved.jsonl\n"
        "  processor tail --bootstrap-servers 127.0.0.1:9092 --topic orders --from-beginning \\\n"
        "      --timeout 5 | processor keys approve --key keys/alice.key \\\n"
        "      | processor produce --bootstrap-servers 127.0.0.1:9092 --topic orders.approved "
        "--artifacts")
    approve.add_argument("--key", metavar="KEY_ID.key", type=Path, required=True,
                         help="the approver's Ed25519 private key file (mode 0600)")
    approve.add_argument("--in", dest="source", metavar="FILE.jsonl", default="-",
                         help="artifacts as JSON lines (default -, standard input)")
    approve.add_argument("--out", dest="target", metavar="FILE.jsonl", default="-",
                         help="where to write the approved artifacts (default -, standard "
                         "output)")
    approve.set_defaults(func=cmd_approve)


def _add_verify(actions: Subcommands) -> None:
    verify = command_parser(
        actions, "verify", help="check the signatures and approvals of artifacts (JSON lines)",
        description="Read artifacts in the JSON form `processor tail` prints, one a line, "
        "and say of each whether a stage with require_signature and require_approvals: N "
        "and these trusted keys would take it: the signature must verify with a trusted key "
        "that is not retired, a present Merkle root must match the payload, and at least N "
        "approvals must verify, counted by public key: each by a trusted key that is not "
        "the issuer's, two approvals by one key counted once. Prints one line an artifact "
        "(or one JSON object with --format json); the exit status is 1 if any artifact does "
        "not verify or a line is not an artifact.",
        epilog="examples:\n"
        "  processor keys verify --trusted-key trust/ --in approved.jsonl\n"
        "  processor keys verify --trusted-key keys/shop.pub --trusted-key keys/alice.pub \\\n"
        "      --trusted-key keys/bob.pub --require-approvals 2 --in approved.jsonl\n"
        "  processor tail --bootstrap-servers 127.0.0.1:9092 --topic orders --from-beginning \\\n"
        "      --timeout 5 | processor keys verify --trusted-key trust/ --require-approvals 1")
    verify.add_argument("--trusted-key", dest="trusted", metavar="DIR|FILE|KEY_ID=BASE64",
                        action="append", required=True,
                        help="a trusted Ed25519 public key: a directory of KEY_ID.pub files "
                        "(as the trust_store setting), one KEY_ID.pub file, or KEY_ID=BASE64 "
                        "(as trusted_keys); repeat for more")
    verify.add_argument("--retired-key", dest="retired", metavar="KEY_ID", action="append",
                        default=[], help="a key id that no longer verifies anything; repeat "
                        "for more")
    verify.add_argument("--require-approvals", metavar="N", type=_count, default=0,
                        help="approvals by distinct trusted approvers' keys each artifact "
                        "needs (default 0: the signature only)")
    verify.add_argument("--approver", dest="approvers", metavar="KEY_ID", action="append",
                        default=[], help="a key id whose approvals count (default: any "
                        "trusted key); repeat for more")
    verify.add_argument("--in", dest="source", metavar="FILE.jsonl", default="-",
                        help="artifacts as JSON lines (default -, standard input)")
    verify.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default) or one JSON object a line")
    verify.set_defaults(func=cmd_verify)


def cmd_generate(args: argparse.Namespace) -> int:
    kind: KeyKind = args.type
    key_id = args.id or f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    files = generate(kind, key_id, directory, force=args.force)
    info = public_info(files.public)
    print(f"key id:      {info.id} ({kind})")
    print(f"private key: {files.private} (mode 0600; keep it secret)")
    print(f"public key:  {files.public}")
    print(f"public:      {info.public}")
    print(f"fingerprint: {info.fingerprint}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    for path in args.files:
        info = public_info(path)
        if args.format == "json":
            print(json.dumps({"id": info.id, "kind": info.kind, "public": info.public,
                              "fingerprint": info.fingerprint, "file": str(info.file),
                              "private_file": info.private_file}))
        else:
            half = " (public half of a private key file)" if info.private_file else ""
            print(f"{info.file}: key id {info.id}, {info.kind}{half}\n"
                  f"  public:      {info.public}\n  fingerprint: {info.fingerprint}")
    sys.stdout.flush()
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number of 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def _same_file(a: str, b: str) -> bool:
    try:
        return a != "-" and b != "-" and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _artifacts(source: str, command: str) -> Iterator[tuple[int, Artifact | None]]:
    """The artifacts of `source` (a file, or `-`: standard input), one JSON line each, with
    their line numbers; a line that is not an artifact is reported on stderr as `None`.
    Blank lines are skipped. Lines are read as they come, so a pipe is processed as it
    flows."""
    from processor.serde.jsonform import artifact_from_json

    with ExitStack() as stack:
        if source == "-":
            lines: TextIO = sys.stdin
        else:
            try:
                lines = stack.enter_context(Path(source).open(encoding="utf-8"))
            except OSError as exc:
                raise ProcessorError(f"{source}: {exc.strerror or exc}") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, artifact_from_json(line)
            except InvalidArtifact as exc:
                sys.stderr.write(f"processor keys {command}: line {number} is not an "
                                 f"artifact: {exc}\n")
                yield number, None


def cmd_approve(args: argparse.Namespace) -> int:
    from processor.security.approvals import approve
    from processor.serde.jsonform import artifact_to_json

    if _same_file(args.source, args.target):
        raise ProcessorError("--in and --out are the same file; write to another one")
    if args.source != "-" and not Path(args.source).is_file():
        raise ProcessorError(f"{args.source}: no such file")  # before --out is written
    key = load_signing_key(args.key)  # refuses a file its group or others may read
    approved = bad = 0
    with ExitStack() as stack:
        if args.target == "-":
            out: TextIO = sys.stdout
        else:
            try:
                out = stack.enter_context(Path(args.target).open("w", encoding="utf-8"))
            except OSError as exc:
                raise ProcessorError(f"{args.target}: {exc.strerror or exc}") from None
        for number, artifact in _artifacts(args.source, "approve"):
            if artifact is None:
                bad += 1
                continue
            if artifact.issuer == key.id:
                sys.stderr.write(f"processor keys approve: line {number}: artifact "
                                 f"{artifact.id} is issued by {key.id!r}; an issuer's own "
                                 "approval does not count\n")
            out.write(artifact_to_json(approve(artifact, key)) + "\n")
            out.flush()
            approved += 1
    sys.stderr.write(f"processor keys approve: {approved:,} artifacts approved by {key.id!r}"
                     f"{f', {bad} lines skipped' if bad else ''}\n")
    return 1 if bad else 0


def _trust_store(given: list[str], retired: list[str]) -> TrustStore:
    """The trust store of `--trusted-key` (directories, KEY_ID.pub files, KEY_ID=BASE64) and
    `--retired-key`, loaded by `TrustStore.load` under the rules a stage's store follows."""
    directories: list[Path] = []
    inline: dict[str, str] = {}
    where: dict[str, str] = {}
    for item in given:
        path = Path(item)
        if path.is_dir():
            directories.append(path)
            continue
        if path.is_file():
            key = load_public(path)
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigError(f"--trusted-key {path}: an X25519 (sealing) key; the trust "
                                  "store holds Ed25519 signing keys")
            key_id, text, source = key_id_of(path), base64.b64encode(
                key.public_bytes_raw()).decode("ascii"), str(path)
        elif "=" in item:
            key_id, _, text = item.partition("=")
            source = f"--trusted-key {key_id}=..."
        else:
            raise ConfigError(f"--trusted-key {item}: no such file or directory (give a "
                              "directory of KEY_ID.pub files, a KEY_ID.pub file or "
                              "KEY_ID=BASE64)")
        if key_id in inline and inline[key_id] != text:
            raise ConfigError(f"key id {key_id!r} has two different keys: in {where[key_id]} "
                              f"and in {source}")
        inline[key_id], where[key_id] = text, source
    store = TrustStore.load(directories, inline, retired)
    if not store.keys:
        raise ConfigError("--trusted-key: no Ed25519 public key found in "
                          f"{', '.join(given)}")
    return store


def cmd_verify(args: argparse.Namespace) -> int:
    from processor.security.approvals import valid_approvers
    from processor.security.policy import Keyring

    store = _trust_store(args.trusted, args.retired)
    approvers = frozenset(args.approvers)
    keyring = Keyring(trust=store, require_signature=True,
                      require_approvals=args.require_approvals, approvers=approvers)
    verified = refused = bad = 0
    for number, artifact in _artifacts(args.source, "verify"):
        if artifact is None:
            bad += 1
            continue
        try:
            keyring.inbound(artifact)  # the checks of a stage with these settings
            error = None
            verified += 1
        except SecurityError as exc:
            error = str(exc)
            refused += 1
        counted, not_counted = valid_approvers(artifact, store, approvers)
        if args.format == "json":
            print(json.dumps({"line": number, "id": artifact.id, "issuer": artifact.issuer,
                              "verified": error is None, "error": error,
                              "approvals": sorted(counted), "not_counted": not_counted}))
        elif error is None:
            listed = f": {', '.join(sorted(counted))}" if counted else ""
            print(f"{artifact.id}: verified, signed by {artifact.issuer!r}, "
                  f"{len(counted)} approval(s) counted{listed}")
        else:
            print(f"{artifact.id}: refused: {error}")
        sys.stdout.flush()
    sys.stderr.write(f"processor keys verify: {verified:,} verified, {refused:,} refused"
                     f"{f', {bad} lines skipped' if bad else ''}\n")
    return 1 if refused or bad else 0
