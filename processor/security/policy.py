"""A stage's keys and security policies, applied around its handler chain.

`SecurityConfig` is what the settings say (key files, trust store, policies);
`Keyring.load` reads the keys once, when the stage is built, so that a missing or wrong
key file stops the stage before it consumes anything. `secure(handler, keyring)` wraps a
stage's handler chain:

inputs, before the handlers, in this order:

1. `require_signature`: the artifact's signature must verify with a trusted key
   (`signing.verify`), and a Merkle root, when it carries one, must match its payload
   (`merkle.check_merkle_root`: the signature covers the root, not that it is right),
   else `SignatureRefused`;
2. `require_approvals: N`: at least N valid approvals by distinct trusted approvers'
   keys (`approvals.check_approvals`), else `ApprovalsMissing`. It implies step 1: the
   issuer's signature is checked first even without `require_signature`, since an
   approval is of content by an issuer, and without the issuer's signature anyone (an
   approver among them) could issue an artifact under the issuer's id and have it
   count. Implying the check, rather than refusing the setting, keeps every existing
   configuration working and stricter, and holds for a `Keyring` made in code too;
3. with an opening key (`open_key`): a sealed payload is opened (`sealing.open_sealed`),
   else `SealRefused`;

outputs, after the handlers, each one in this order:

4. with a pseudonym key: the subject in metadata becomes `pseudonym_hash`; a subject
   that has no pseudonym (`pseudonym.Pseudonymizer.hash`) is `PseudonymRefused`, so the
   record is dead-lettered, never written with its subject in clear;
5. with recipients (`seal_recipients`): the payload is sealed for them;
6. with `merkle`: the Merkle root of the carried payload is set;
7. with a signing key (`sign_key`): the artifact is issued and signed by the stage.

A refusal is a `SecurityError`; the stage dead-letters the record with the reason the
error names (`signature`, `sealed` for a payload that does not open, `invalid` for a
subject without a pseudonym). A handler chain that returns its input unchanged, with no
output step configured, still passes the original bytes through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from pydantic import SecretStr

from processor.core.artifact import Artifact
from processor.core.errors import ConfigError, SecurityError
from processor.core.handlers import (
    AnyHandler,
    AsyncHandler,
    BatchOutcome,
    Handler,
    Outcome,
    Routed,
    handler_name,
    is_async_handler,
    is_batch_handler,
    outcomes,
)
from processor.security.approvals import check_approvals
from processor.security.keys import (
    OpeningKey,
    RecipientKey,
    SigningKey,
    load_opening_key,
    load_recipient,
    load_signing_key,
)
from processor.security.merkle import check_merkle_root, with_merkle_root
from processor.security.pseudonym import DEFAULT_SUBJECT_KEY, Pseudonymizer
from processor.security.sealing import is_sealed, open_sealed, seal
from processor.security.signing import sign, verify
from processor.security.truststore import TrustStore


@dataclass(frozen=True)
class SecurityConfig:
    """The security settings of a stage (see `processor.ops.settings` for each one)."""

    sign_key: str | None = None
    trust_store: tuple[str, ...] = ()
    trusted_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    retired_keys: tuple[str, ...] = ()
    require_signature: bool = False
    require_approvals: int = 0
    require_approvals_from: tuple[str, ...] = ()
    seal_recipients: tuple[str, ...] = ()
    open_key: str | None = None
    pseudonym_key: SecretStr | None = field(default=None, repr=False)
    pseudonym_subject: str = DEFAULT_SUBJECT_KEY
    merkle: bool = False

    @property
    def active(self) -> bool:
        """Whether any of it applies to a stage."""
        return bool(self.sign_key or self.trust_store or self.trusted_keys
                    or self.require_signature or self.require_approvals
                    or self.seal_recipients or self.open_key or self.pseudonym_key
                    or self.merkle)


@dataclass(frozen=True)
class Keyring:
    """A stage's loaded keys and policies."""

    signer: SigningKey | None = None
    trust: TrustStore = field(default_factory=TrustStore)
    recipients: tuple[RecipientKey, ...] = ()
    opener: OpeningKey | None = None
    require_signature: bool = False
    require_approvals: int = 0
    approvers: frozenset[str] = frozenset()
    pseudonymizer: Pseudonymizer | None = None
    pseudonym_subject: str = DEFAULT_SUBJECT_KEY
    merkle: bool = False

    @classmethod
    def load(cls, config: SecurityConfig) -> Keyring:
        """Read the key files and the trust store of `config`; ConfigError (one line) for
        a file that cannot be used or a policy that cannot be met."""
        trust = TrustStore.load(config.trust_store, config.trusted_keys, config.retired_keys)
        if (config.require_signature or config.require_approvals) and not trust.keys:
            raise ConfigError("require_signature/require_approvals need trusted keys: set "
                              "trust_store (a directory of KEY_ID.pub files) or trusted_keys")
        try:
            pseudonymizer = Pseudonymizer(config.pseudonym_key) \
                if config.pseudonym_key is not None else None
        except ValueError as exc:
            raise ConfigError(f"pseudonym_key: {exc}") from None
        recipients = tuple(load_recipient(Path(p)) for p in config.seal_recipients)
        ids = [r.id for r in recipients]
        if repeated := sorted({i for i in ids if ids.count(i) > 1}):
            raise ConfigError(f"seal_recipients: key id {', '.join(repeated)} given more than "
                              "once (a recipient's id is its file name without the suffix)")
        return cls(
            signer=load_signing_key(Path(config.sign_key)) if config.sign_key else None,
            trust=trust,
            recipients=recipients,
            opener=load_opening_key(Path(config.open_key)) if config.open_key else None,
            require_signature=config.require_signature,
            require_approvals=config.require_approvals,
            approvers=frozenset(config.require_approvals_from),
            pseudonymizer=pseudonymizer,
            pseudonym_subject=config.pseudonym_subject,
            merkle=config.merkle,
        )

    @property
    def checks_inputs(self) -> bool:
        return self.require_signature or self.require_approvals > 0 or self.opener is not None

    @property
    def changes_outputs(self) -> bool:
        return bool(self.pseudonymizer or self.recipients or self.merkle or self.signer)

    def inbound(self, artifact: Artifact) -> Artifact:
        """Steps 1 to 3 of the module documentation."""
        if self.require_signature or self.require_approvals:
            verify(artifact, self.trust)
            check_merkle_root(artifact)
        if self.require_approvals:
            check_approvals(artifact, self.trust, self.require_approvals, self.approvers)
        if self.opener is not None and is_sealed(artifact):
            artifact = open_sealed(artifact, self.opener)
        return artifact

    def outbound(self, artifact: Artifact) -> Artifact:
        """Steps 4 to 7 of the module documentation."""
        if self.pseudonymizer is not None:
            artifact = self.pseudonymizer.apply(artifact, self.pseudonym_subject)
        if self.recipients and not is_sealed(artifact):
            artifact = seal(artifact, self.recipients)
        if self.merkle:
            artifact = with_merkle_root(artifact)
        if self.signer is not None:
            artifact = sign(artifact, self.signer)
        return artifact


def _after(keyring: Keyring, result: Outcome) -> Outcome:
    """The keyring's output policies applied to one handler result."""
    if result is None or not keyring.changes_outputs:
        return result
    if type(result) is Artifact:
        return keyring.outbound(result)
    return [Routed(output, keyring.outbound(item)) for output, item in outcomes(result)]


class Secured:
    """A handler chain with a keyring's policies around it (see the module docs)."""

    __slots__ = ("handler", "keyring", "names")

    def __init__(self, handler: Handler, keyring: Keyring) -> None:
        self.handler = handler
        self.keyring = keyring
        self.names = getattr(handler, "names", (handler_name(handler),))

    def __call__(self, artifact: Artifact) -> Outcome:
        keyring = self.keyring
        given = keyring.inbound(artifact) if keyring.checks_inputs else artifact
        return _after(keyring, self.handler(given))

    def __repr__(self) -> str:
        return f"Secured({', '.join(self.names)})"


class SecuredAsync(Secured):
    """An `async def` handler with the policies around it: checks before the call, the
    output policies after it, on the stage's event loop (the checks are CPU work of tens
    of microseconds, not worth a thread)."""

    __slots__ = ()

    async def __call__(self, artifact: Artifact) -> Outcome:  # type: ignore[override]
        keyring = self.keyring
        given = keyring.inbound(artifact) if keyring.checks_inputs else artifact
        call: AsyncHandler = self.handler  # type: ignore[assignment]
        return _after(keyring, await call(given))


_BatchCall = Callable[[list[Artifact]], Sequence[BatchOutcome]]
_AsyncBatchCall = Callable[[list[Artifact]], Awaitable[Sequence[BatchOutcome]]]


class SecuredBatch:
    """A batch handler with the policies around it. A record refused by an input check
    gets its `SecurityError` as its outcome (dead-lettered on its own); the handler sees
    the others. A result refused by an output step is that record's outcome too."""

    __slots__ = ("handler", "keyring", "names")

    def __init__(self, handler: AnyHandler, keyring: Keyring) -> None:
        self.handler = handler
        self.keyring = keyring
        self.names = (handler_name(handler),)  # type: ignore[arg-type]

    def _before(self, artifacts: list[Artifact]) -> tuple[list[BatchOutcome | None],
                                                          list[Artifact]]:
        slots: list[BatchOutcome | None] = []
        given: list[Artifact] = []
        for artifact in artifacts:
            try:
                checked = (self.keyring.inbound(artifact) if self.keyring.checks_inputs
                           else artifact)
            except SecurityError as exc:
                slots.append(exc)
            else:
                slots.append(None)
                given.append(checked)
        return slots, given

    def _merge(self, slots: list[BatchOutcome | None],
               results: Sequence[BatchOutcome]) -> list[BatchOutcome]:
        if len(results) != sum(1 for s in slots if s is None):
            return list(results)  # the stage reports the wrong count
        produced = iter(results)
        merged: list[BatchOutcome] = []
        for slot in slots:
            if slot is not None:
                merged.append(slot)
                continue
            result = next(produced)
            if not isinstance(result, BaseException):
                try:
                    result = _after(self.keyring, result)
                except SecurityError as exc:  # this record only (a subject without pseudonym)
                    result = exc
            merged.append(result)
        return merged

    def __call__(self, artifacts: list[Artifact]) -> list[BatchOutcome]:
        slots, given = self._before(artifacts)
        call: _BatchCall = self.handler  # type: ignore[assignment]
        return self._merge(slots, call(given) if given else [])

    def __repr__(self) -> str:
        return f"Secured({', '.join(self.names)})"


class SecuredAsyncBatch(SecuredBatch):
    """An async batch handler with the policies around it (as `SecuredBatch`)."""

    __slots__ = ()

    async def __call__(self, artifacts: list[Artifact]) -> list[BatchOutcome]:  # type: ignore[override]
        slots, given = self._before(artifacts)
        call: _AsyncBatchCall = self.handler  # type: ignore[assignment]
        return self._merge(slots, await call(given) if given else [])


def secure(handler: AnyHandler, keyring: Keyring | None) -> AnyHandler:
    """`handler` with the keyring's policies around it; `handler` itself when none apply.
    Async and batch handlers keep their kind (the stage runs them concurrently)."""
    if keyring is None or not (keyring.checks_inputs or keyring.changes_outputs):
        return handler
    batch, asynchronous = is_batch_handler(handler), is_async_handler(handler)
    if batch:
        return (SecuredAsyncBatch if asynchronous else SecuredBatch)(handler, keyring)
    if asynchronous:
        return SecuredAsync(handler, keyring)  # type: ignore[arg-type]
    return Secured(handler, keyring)  # type: ignore[arg-type]
