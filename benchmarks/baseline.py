"""Today's code as a contender: the project's stage at a fixed git commit, measured in the
same run as the working tree's, so that a change to the record path is shown against the
code it replaces on the same broker, machine and load.

`prepared(rev)` checks the commit out into a temporary git worktree (`git worktree add
--detach`), installs it into a virtual environment of its own, kept under
`~/.cache/processor/bench-baseline/<commit>/venv` and reused by later runs of the same
commit, and removes the worktree when the run is over. The install is the project's own
build (`setup.py`: the codec compiled with mypyc). It is a regular install, not an editable
one, so that the cached environment does not point into the worktree, which is removed.
Where the working tree's codec is the compiled one and the baseline's is not (no compiler
when it was built), the baseline is refused rather than measured with the slower
pure-Python source.

The baseline rows run the commit's own `benchmarks/contender_project.py` (with its
`project_handler.py` and `workload.py`): a contender written against that commit's API,
with the same command line as today's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_REV = "f6a95a638065735034d3d88e38cbaeb41c34b04b"
"""The commit measured as the baseline unless `--baseline REV` names another one: the code
of the stage before the runtime's record path was rewritten."""

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "processor" \
    / "bench-baseline"
"""Where the baseline's environments are kept, one per commit."""

_PROBE = ("import json, processor; from processor.serde import fast; "
          "print(json.dumps({'file': processor.__file__, 'codec': fast.IMPLEMENTATION, "
          "'compiled': bool(fast.COMPILED)}))")

Progress = Callable[[str], None]


class BaselineError(Exception):
    """The baseline could not be prepared; its rows are not measured."""


@dataclass(frozen=True)
class Baseline:
    rev: str
    """The commit as given (`--baseline`)."""
    commit: str
    """Its full hash."""
    python: Path
    """The interpreter of its environment."""
    bench_dir: Path
    """The folder of the contender scripts the baseline rows run."""
    codec: str
    """`processor.serde.fast.IMPLEMENTATION` in its environment."""

    @property
    def short(self) -> str:
        return self.commit[:10]


def _git(*args: str, timeout: float = 120.0) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def resolve(rev: str) -> str:
    """The full hash of commit `rev`."""
    return _git("rev-parse", "--verify", f"{rev}^{{commit}}")


def probe(python: Path) -> dict[str, object]:
    """What `python` imports as `processor`, and its codec (run outside any checkout)."""
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PROCESSOR_PURE_PYTHON")}
    done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=env, timeout=120, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise BaselineError(f"{python} cannot import processor: {tail}")
    loaded: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def _build(source: Path, venv: Path, progress: Progress) -> None:
    """A new virtual environment at `venv` with the package installed from `source`."""
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    progress(f"baseline: creating {venv} and installing the commit into it (the codec is "
             "compiled with mypyc: a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=300)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PROCESSOR_PURE_PYTHON_BUILD", "PYTHONPATH")}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           str(source)],
                          capture_output=True, text=True, env=env, cwd=source, timeout=1800,
                          check=False)
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-4:])
        shutil.rmtree(venv, ignore_errors=True)
        raise BaselineError(f"pip install of the baseline failed (exit {done.returncode}): "
                            f"{tail}")


def environment(commit: str, source: Path, want_compiled: bool,
                progress: Progress) -> tuple[Path, str]:
    """The cached environment of `commit` (built from `source` when missing or broken):
    its interpreter and codec."""
    venv = CACHE / commit / "venv"
    ready = venv / ".ready"
    python = venv / "bin" / "python"
    if ready.is_file():
        try:
            found = probe(python)
        except (BaselineError, OSError, subprocess.SubprocessError):
            found = {}
        if found.get("compiled") or not want_compiled:
            progress(f"baseline: reusing {venv} (codec: {found.get('codec')})")
            return python, str(found.get("codec"))
        progress(f"baseline: {venv} has no compiled codec; building it again")
    _build(source, venv, progress)
    found = probe(python)
    where = str(found.get("file", ""))
    if not where.startswith(str(venv)):
        raise BaselineError(f"the baseline environment imports processor from {where}, "
                            f"not from {venv}")
    if want_compiled and not found.get("compiled"):
        raise BaselineError(f"the baseline's codec is {found.get('codec')!r} but the working "
                            "tree's is compiled: comparing them would measure the compiler, "
                            "not the code (is a C compiler and Python.h installed?)")
    ready.write_text(f"{commit}\n", "utf-8")
    return python, str(found.get("codec"))


@contextlib.contextmanager
def prepared(rev: str, want_compiled: bool, fallback_bench_dir: Path,
             progress: Progress) -> Iterator[Baseline]:
    """The baseline of commit `rev`, its worktree removed on exit."""
    commit = resolve(rev)
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    worktree = tmp / "src"
    added = False
    try:
        progress(f"baseline: checking out {commit[:10]} into a temporary worktree {worktree}")
        _git("worktree", "add", "--detach", str(worktree), commit)
        added = True
        python, codec = environment(commit, worktree, want_compiled, progress)
        bench_dir = worktree / "benchmarks"
        if not (bench_dir / "contender_project.py").is_file():
            bench_dir = fallback_bench_dir
        yield Baseline(rev, commit, python, bench_dir, codec)
    finally:
        if added:
            with contextlib.suppress(BaselineError, OSError, subprocess.SubprocessError):
                _git("worktree", "remove", "--force", str(worktree))
        shutil.rmtree(tmp, ignore_errors=True)
