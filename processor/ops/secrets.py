"""Secret values: which settings are secrets, and how they are kept out of output.

A declared secret setting is a `pydantic.SecretStr`. The librdkafka pass-through (`kafka:`)
has no declarations, so there a value is a secret when its key looks like one
(`is_secret_key`: `sasl.password`, `ssl.key.pem`, `PROCESSOR_KAFKA__SASL_JAAS_CONFIG`...).
`redact` hides both kinds in anything printed (`processor config check`, `describe()`),
and `secret_values` hands them to `processor.ops.logs.register_secret`, which scrubs
them from every log line.

A secret is never needed on a command line, where other local users can read it
(`/proc/PID/cmdline`, `ps`): every secret setting also comes from a file, named by the
environment variable `<NAME>_FILE` (`PROCESSOR_PSEUDONYM_KEY_FILE`) or the flag
`--<name>-file`, as Docker and Kubernetes secrets are mounted. `read_secret_file` reads
one: its UTF-8 text without the trailing line break(s).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, cast

from pydantic import SecretStr

SECRET_MARKERS: Final = (
    "password", "secret", "sasl.oauthbearer", "sasl.jaas", "ssl.key", "token",
    "credential", "api.key", "private",
)
REDACTED: Final = "***"
FILE_SUFFIX: Final = "_FILE"
"""`PROCESSOR_PSEUDONYM_KEY_FILE` names the file holding `PROCESSOR_PSEUDONYM_KEY`."""
PREFER_FILE: Final = ("a value on the command line is readable by other local users "
                      "(/proc/PID/cmdline)")
"""Why the help of a secret flag points to its file or environment form."""


def read_secret_file(path: Path) -> str:
    """The secret held in the file at `path`: its UTF-8 text without the trailing line
    break(s) (`echo secret > FILE` writes one). OSError when it cannot be read, ValueError
    when it is not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    return text.rstrip("\r\n")


def secret_from_env(env: Mapping[str, str], name: str) -> str | None:
    """A secret from the environment: the variable `name`, or the file that
    `name` + `_FILE` names (never both). None when neither is set. ValueError saying
    which variable when both are set or the file cannot be read."""
    path = env.get(name + FILE_SUFFIX)
    if not path:
        return env.get(name) or None
    if env.get(name):
        raise ValueError(f"set {name} or {name}{FILE_SUFFIX}, not both")
    try:
        return read_secret_file(Path(path))
    except OSError as exc:
        raise ValueError(f"{name}{FILE_SUFFIX}: cannot read {path}: "
                         f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{name}{FILE_SUFFIX}: {exc}") from None


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
