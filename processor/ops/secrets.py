"""Secret values: which settings are secrets, and how they are kept out of output.

A declared secret setting is a `pydantic.SecretStr`. The librdkafka pass-through (`kafka:`)
has no declarations, so there a value is a secret when its key looks like one
(`is_secret_key`: `sasl.password`, `ssl.key.pem`, `PROCESSOR_KAFKA__SASL_JAAS_CONFIG`...).
`redact` hides both kinds in anything printed (`processor config check`, `describe()`),
and `secret_values` hands them to `processor.ops.logs.register_secret`, which scrubs
them from every log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, cast

from pydantic import SecretStr

SECRET_MARKERS: Final = (
    "password", "secret", "sasl.oauthbearer", "sasl.jaas", "ssl.key", "token",
    "credential", "api.key", "private",
)
REDACTED: Final = "***"


def is_secret_key(key: str) -> bool:
    """Whether a setting's value is a secret, judged by its name."""
    normal = key.lower().replace("_", ".").replace("-", ".")
    return any(marker in normal for marker in SECRET_MARKERS)


def redact(mapping: Mapping[str, object]) -> dict[str, object]:
    """A copy of `mapping` (nested mappings too) with every secret value (a `SecretStr`,
    or under a secret-looking key) replaced by `***`. Use it on anything about to be
    printed or logged."""
    out: dict[str, object] = {}
    for key, value in mapping.items():
        if is_secret_key(str(key)) or isinstance(value, SecretStr):
            out[key] = REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact(cast(Mapping[str, object], value))
        else:
            out[key] = value
    return out


def secret_values(mapping: Mapping[str, object]) -> list[str]:
    """The secret values of `mapping` (nested mappings too) as strings, for log scrubbing."""
    found: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, Mapping):
            found.extend(secret_values(cast(Mapping[str, object], value)))
        elif is_secret_key(str(key)) and value is not None:
            found.append(str(value))
    return [value for value in found if value]
