"""The built-in handlers `sign`, `verify`, `seal` and `open`.

They are declared as entry points of the group `processor.handlers` (see
`pyproject.toml`), so a stage names them like any handler:
`handlers: [verify, my_module:transform, sign]`. They need the stage's keys, which
`build_stage` binds from the stage's settings (`bound_chain`): `sign` needs `sign_key`,
`verify` a trust store, `seal` at least one of `seal_recipients`, `open` an `open_key`.
A built-in handler whose key is not configured stops the stage at build time with one
line saying which setting to give. Outside a stage, bind one with a `Keyring`:
`verify.bind(Keyring(trust=store))`.

`verify` checks the signature (`signing.verify`), a Merkle root when one is present
(`merkle.check_merkle_root`) and, when the stage requires approvals, the approvals (by
key: `approvals.check_approvals`); `open` passes an artifact that is not sealed through
as is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError
from processor.core.handlers import Handler, chain, registry
from processor.security.approvals import check_approvals
from processor.security.merkle import check_merkle_root
from processor.security.policy import Keyring
from processor.security.sealing import is_sealed, open_sealed
from processor.security.sealing import seal as seal_payload
from processor.security.signing import sign as sign_artifact
from processor.security.signing import verify as verify_signature


class KeyedHandler:
    """A built-in handler that needs the stage's keys; `bind` gives the handler itself."""

    def __init__(self, name: str, needs: str,
                 make: Callable[[Keyring], Callable[[Artifact], Artifact]]) -> None:
        self.__name__ = self.__qualname__ = name
        self.needs = needs
        self._make = make

    def bind(self, keyring: Keyring | None) -> Callable[[Artifact], Artifact]:
        """The handler with `keyring`'s keys; ConfigError when the key it needs is missing."""
        try:
            if keyring is None:
                raise LookupError
            return self._make(keyring)
        except LookupError:
            raise ConfigError(f"handler {self.__name__!r} needs {self.needs}") from None

    def __call__(self, artifact: Artifact) -> Artifact:
        raise ConfigError(f"handler {self.__name__!r} is not bound to keys: it needs "
                          f"{self.needs} (a stage binds it from its settings; in code, "
                          f"use {self.__name__}.bind(keyring))")

    def __repr__(self) -> str:
        return f"<built-in handler {self.__name__}>"


def _sign(keyring: Keyring) -> Callable[[Artifact], Artifact]:
    signer = keyring.signer
    if signer is None:
        raise LookupError

    def sign(artifact: Artifact) -> Artifact:
        return sign_artifact(artifact, signer)

    return sign


def _verify(keyring: Keyring) -> Callable[[Artifact], Artifact]:
    trust, required, approvers = keyring.trust, keyring.require_approvals, keyring.approvers
    if not trust.keys:
        raise LookupError

    def verify(artifact: Artifact) -> Artifact:
        verify_signature(artifact, trust)
        check_merkle_root(artifact)
        if required:
            check_approvals(artifact, trust, required, approvers)
        return artifact

    return verify


def _seal(keyring: Keyring) -> Callable[[Artifact], Artifact]:
    recipients = keyring.recipients
    if not recipients:
        raise LookupError

    def seal(artifact: Artifact) -> Artifact:
        return artifact if is_sealed(artifact) else seal_payload(artifact, recipients)

    return seal


def _open(keyring: Keyring) -> Callable[[Artifact], Artifact]:
    opener = keyring.opener
    if opener is None:
        raise LookupError

    def open(artifact: Artifact) -> Artifact:
        return open_sealed(artifact, opener)

    return open


sign = KeyedHandler("sign", "a signing key: set sign_key (a KEY_ID.key file of an "
                            "Ed25519 key, processor keys generate)", _sign)
verify = KeyedHandler("verify", "trusted keys: set trust_store (a directory of KEY_ID.pub "
                                "files) or trusted_keys", _verify)
seal = KeyedHandler("seal", "recipients: set seal_recipients (KEY_ID.pub files of X25519 "
                            "keys, processor keys generate --type sealing)", _seal)
open_ = KeyedHandler("open", "an opening key: set open_key (a KEY_ID.key file of an X25519 "
                             "key)", _open)

BUILT_INS = {"sign": sign, "verify": verify, "seal": seal, "open": open_}


def bind(handler: Handler, keyring: Keyring | None) -> Handler:
    """`handler` bound to `keyring` if it is a built-in security handler, else itself."""
    return handler.bind(keyring) if isinstance(handler, KeyedHandler) else handler


def bound_chain(refs: Sequence[str], keyring: Keyring | None) -> Handler:
    """The stage's handlers by reference, built-in security handlers bound to its keys."""
    if not refs:
        from processor.core.errors import HandlerNotFound
        raise HandlerNotFound("a stage needs at least one handler")
    return chain(*(bind(registry.resolve(ref), keyring) for ref in refs))
