"""`processor keys generate | show`: the key files of artifact signing and sealing.

`generate` writes a key pair named after its key id: KEY_ID.key, the private key, with
mode 0600, and KEY_ID.pub, the public key to hand to the stages that verify (signing
keys) or seal for it (sealing keys). `show` prints what is public about a key file,
private or public: its id, kind, raw public key (base64, the form `trusted_keys` takes)
and fingerprint; never the private key. See docs/security.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from processor.cli.common import Subcommands, command_parser
from processor.security.keys import KINDS, KeyKind, generate, public_info


def add_parsers(sub: Subcommands) -> None:
    keys = command_parser(
        sub, "keys", help="generate or show the keys that sign and seal artifacts",
        description="Key files for artifact security (docs/security.md). A signing key "
        "(Ed25519) signs artifacts and approvals; stages verify with its public key in their "
        "trust store. A sealing key (X25519) opens payloads sealed for it; stages seal for "
        "its public key. A key's id is its file name without the suffix: KEY_ID.key (the "
        "private key, mode 0600) and KEY_ID.pub (the public key).",
        epilog="examples:\n"
        "  processor keys generate --id orders-signer-2026-11 --dir keys/\n"
        "  processor keys generate --type sealing --id billing --dir keys/\n"
        "  processor keys show keys/orders-signer-2026-11.pub")
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
