"""This project's stage with artifact security: the `project-alo` stage of
`contender_project.py`, its handler chain extended with the built-in security handlers
and its keys generated for the run (docs/security.md).

    --security sign   transform, then `sign` (Ed25519, the stage's key) and `verify` (the
                      trust store holding that key): per record, the cost of a signing
                      stage and of a verifying one, in one stage;
    --security seal   transform, then `seal` (for one X25519 recipient) and `open` (with
                      that recipient's key): per record, the cost of sealing and of
                      opening.

The outputs are transformed artifacts the harness checks as for every row (signed ones
for `sign`; opened, so plain, for `seal`). Every other argument is `contender_project`'s.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contender_project

from processor.security.keys import generate
from processor.security.policy import SecurityConfig

HANDLERS = {
    "sign": ("project_handler:transform", "sign", "verify"),
    "seal": ("project_handler:transform", "seal", "open"),
}


def security_config(mode: str, keys: Path) -> SecurityConfig:
    if mode == "sign":
        generate("signing", "bench-stage", keys)
        return SecurityConfig(sign_key=str(keys / "bench-stage.key"),
                              trust_store=(str(keys),))
    generate("sealing", "bench-recipient", keys)
    return SecurityConfig(seal_recipients=(str(keys / "bench-recipient.pub"),),
                          open_key=str(keys / "bench-recipient.key"))


def main() -> int:
    argv = sys.argv[1:]
    at = argv.index("--security")
    mode = argv[at + 1]
    if mode not in HANDLERS:
        raise SystemExit(f"--security: {mode!r}; choose sign or seal")
    sys.argv[1:] = argv[:at] + argv[at + 2:]
    with tempfile.TemporaryDirectory(prefix="bench-keys-") as tmp:
        config = security_config(mode, Path(tmp))
        build_stage = contender_project.build_stage

        def build_secured(setup: Any, *args: Any, **kwargs: Any) -> Any:
            secured = dataclasses.replace(setup, handlers=HANDLERS[mode], security=config)
            return build_stage(secured, *args, **kwargs)

        contender_project.build_stage = build_secured
        return contender_project.main()


if __name__ == "__main__":
    sys.exit(main())
