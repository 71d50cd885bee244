"""The specialised encoder and decoder of the packaged artifact schema: compiled, or the
pure-Python source it is compiled from.

The code is `processor.serde.artifact_avro` (pure, strictly typed Python). Installing the
package compiles that module with mypyc (`setup.py`) into a C extension that sits next
to it and takes its place on import; per ~300-byte artifact it decodes about three times
and encodes about twice as fast as the same source run by the interpreter. Where the
extension could not be built (no C compiler) the source is used as it is. Both give the
same bytes and the same artifacts (`tests/unit/test_codec_compiled.py` checks them against
each other and against fastavro).

`PURE_PYTHON_ENV` set to a true value (1, true, yes, on) makes this module use the source
even where the extension is built. In a source checkout the source is also used, with a
warning, when it is newer than the extension (edited after the build: `make` or
`pip install -e .` builds it again).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Final, Protocol

from processor.core.artifact import Artifact
from processor.serde import artifact_avro as _built
from processor.serde.artifact_avro import READ_ERRORS, checksum_mismatch, read_failure

__all__ = [
    "COMPILED",
    "IMPLEMENTATION",
    "PURE_PYTHON_ENV",
    "READ_ERRORS",
    "checksum_mismatch",
    "decode",
    "encode",
    "pure_module",
    "read_failure",
]

logger = logging.getLogger(__name__)

PURE_PYTHON_ENV: Final = "PROCESSOR_PURE_PYTHON"
"""Environment variable: a true value forces the pure-Python source (for tests)."""

_TRUE: Final = frozenset(("1", "true", "yes", "on"))
_PURE_NAME: Final = "processor.serde._artifact_avro_source"


class Encoder(Protocol):
    def __call__(self, artifact: Artifact, prefix: bytes = b"") -> bytes: ...


class Decoder(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, start: int = 0, *,
                 legacy: bool = False) -> Artifact: ...


def is_compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from a compiled extension rather than Python source."""
    return not str(getattr(module, "__file__", "") or "").endswith((".py", ".pyc"))


def pure_module() -> ModuleType:
    """`artifact_avro` run from its Python source, whether or not the extension exists
    (loaded once, under its own module name)."""
    loaded = sys.modules.get(_PURE_NAME)
    if loaded is not None:
        return loaded
    if not is_compiled(_built):
        return _built
    source = _source_path()
    spec = importlib.util.spec_from_file_location(_PURE_NAME, source)
    if spec is None or spec.loader is None:  # pragma: no cover - a file path always has one
        raise ImportError(f"cannot load {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PURE_NAME] = module
    spec.loader.exec_module(module)
    return module


def _source_path() -> Path:
    return Path(str(_built.__file__)).with_name("artifact_avro.py")


def _choose() -> ModuleType:
    if not is_compiled(_built):
        return _built
    if os.environ.get(PURE_PYTHON_ENV, "").strip().lower() in _TRUE:
        return pure_module()
    # Only in a source checkout (an editable install) can the source change after the
    # build; an installed wheel's files all get the time of the install.
    checkout = (Path(__file__).resolve().parents[2] / "setup.py").is_file()
    try:
        stale = checkout and (
            _source_path().stat().st_mtime > Path(str(_built.__file__)).stat().st_mtime)
    except OSError:
        stale = False
    if stale:
        logger.warning("%s is newer than its compiled extension %s: using the source; "
                       "reinstall the package to compile it again",
                       _source_path(), _built.__file__)
        return pure_module()
    return _built


_impl: Final = _choose()

COMPILED: Final[bool] = is_compiled(_impl)
"""Whether the compiled extension is in use."""

IMPLEMENTATION: Final[str] = "compiled (mypyc)" if COMPILED else "pure Python"
"""Which implementation is in use, for logs and reports."""

encode: Final[Encoder] = _impl.encode
decode: Final[Decoder] = _impl.decode
