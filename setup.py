"""Build step of the package (its metadata is in pyproject.toml).

Compiles `processor/serde/artifact_avro.py`, the specialised Avro encoder and decoder of the
artifact, with mypyc into a C extension that sits next to the source and takes its place on
import (`processor.serde.fast` says which one is in use). The extension is optional: where
it cannot be built (no C compiler or Python headers, or `PROCESSOR_PURE_PYTHON_BUILD=1`),
the package installs with the pure-Python source alone, which gives the same results.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

COMPILED_MODULES = ["processor/serde/artifact_avro.py"]


def extensions() -> list[Extension]:
    if os.environ.get("PROCESSOR_PURE_PYTHON_BUILD", "").strip().lower() in ("1", "true", "yes"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    # The modules it imports are read for their types only; the third-party packages
    # behind them are not installed where the package is built.
    built: list[Extension] = mypycify(
        ["--ignore-missing-imports", "--follow-imports=silent", *COMPILED_MODULES],
        opt_level="3",
    )
    for extension in built:
        extension.optional = True  # no compiler: a warning, and the pure-Python source
    return built


setup(ext_modules=extensions())
