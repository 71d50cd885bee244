"""Run the shell and Python blocks of one Markdown file, in order, as a reader would.

The rules (docs/contributing.md has the reader's side):

* The doc runs in a new folder holding copies of the repository's `docs/`, `examples/` and
  `schemas/` (its commands are written from the repository's root), with `processor` and
  `python` of the running interpreter first on PATH, no `PYTHONPATH` and no `PROCESSOR_*`
  variable but `PROCESSOR_METRICS_HOST=127.0.0.1`.
* ```` ```sh ````, ```` ```bash ```` and ```` ```shell ```` blocks run as a bash script
  with `set -e`; ```` ```console ```` blocks run their `$ ` lines, each of which must exit
  0 unless the block shows its status with `$ echo $?` (the output shown is compared under
  an `output` marker only);
  ```` ```python ```` blocks run as a script in the doc's folder (importable from there),
  then call the `test_*` functions they define. A block that is a file (`# NAME.EXT` as its
  first line, or a `file NAME` marker) is written to the folder instead, in any language.
  Other blocks are text.
* A block and the `continue` blocks after it form one session: one bash script, or one
  Python process.
* Addresses, in every block run or written, are the test servers':
  `http://127.0.0.1:PORT/apis/ccompat/v7` (and `http://registry:8081/...`) the registry;
  `127.0.0.1:PORT`, `localhost:PORT`, `HOST:PORT`, `127.0.0.1:9092`, `localhost:9092` and
  `kafka:9092` the broker (the secured one in a `secured` block). In a shell block, a line
  `processor broker ...` does not start a broker: it prints the test broker's address
  (`--secure DIR --user NAME ...`: after writing DIR's CA and client settings files for
  `admin` and each user, created on the secured broker); `processor registry` prints the
  registry's URL. Every other command runs as written.
* Every session ends within `SESSION_TIMEOUT` seconds. What a session left running in the
  background (`... &`) runs on until the doc ends, then its process group gets SIGTERM and,
  after `STOP_GRACE` seconds, SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.markdown import PYTHON, SHELL, Block

ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUT = 120.0
"""Seconds one session (a block and its `continue` blocks) may take."""
STOP_GRACE = 15.0
"""Seconds background commands get between SIGTERM and SIGKILL when the doc ends."""
COPIED = ("docs", "examples", "schemas")

_REGISTRY = re.compile(r"https?://(?:127\.0\.0\.1:PORT|HOST:PORT|registry:8081)/apis/ccompat/v7")
_BOOTSTRAP = re.compile(r"\b(?:(?:127\.0\.0\.1|localhost|HOST):(?:PORT|9092)|kafka:9092)\b")
_BROKER_LINE = re.compile(r"^(?P<indent>[ \t]*)processor broker\b(?P<args>[^&#\n]*)&?[ \t]*"
                          r"(?:#.*)?$", re.M)
_REGISTRY_LINE = re.compile(r"^(?P<indent>[ \t]*)processor registry\b[^&#\n]*&?[ \t]*(?:#.*)?$",
                            re.M)
_PY_RUNNER = """\
import os, runpy, sys
sys.path.insert(0, os.getcwd())
names = runpy.run_path(sys.argv[1], run_name="__main__")
for name, value in list(names.items()):
    if name.startswith("test_") and callable(value):
        value()
        print(f"doc-test: {name} passed", file=sys.stderr)
"""


class DocFailure(AssertionError):
    """A block that did not do what its doc says."""


@dataclass
class Servers:
    """The test servers a doc's blocks reach, started only when a block needs one."""

    bootstrap: Callable[[], str]
    registry: Callable[[], str]
    secured: Callable[[], SecuredBroker]


@dataclass
class SecuredBroker:
    """What `secured` blocks need of the secured broker."""

    bootstrap: str
    admin_settings: dict[str, str]
    write_files: Callable[[Path, list[str]], None]
    """Writes the CA and the client settings of `admin` and the users (created) into a
    folder, as `processor broker --secure DIR --user NAME` does."""


@dataclass
class Session:
    """A block and its `continue` blocks."""

    blocks: list[Block]
    file: str | None = None
    """The file the one block is, written instead of run."""

    @property
    def first(self) -> Block:
        return self.blocks[0]

    @property
    def kind(self) -> str:
        return "python" if self.first.lang in PYTHON else "shell"


@dataclass
class Outcome:
    """What happened to a doc's blocks."""

    run: int = 0
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(where, reason) of each skipped block."""
    text: int = 0


def sessions(blocks: list[Block], outcome: Outcome) -> list[Session]:
    """The sessions of a doc's blocks; counts the blocks that are text, files or skipped."""
    result: list[Session] = []
    for block in blocks:
        if block.markers.skip is not None:
            outcome.skipped.append((block.where, block.markers.skip))
            continue
        if block.file_name is not None:
            result.append(Session([block], block.file_name))
            outcome.written += 1
            continue
        if not block.runnable:
            outcome.text += 1
            continue
        kind = "python" if block.lang in PYTHON else "shell"
        if block.markers.cont:
            previous = result[-1] if result else None
            if previous is None or previous.file is not None or previous.kind != kind:
                raise DocFailure(f"{block.where}: continue, but the block run before it is "
                                 f"not a {kind} block")
            if block.markers.secured != previous.first.markers.secured:
                raise DocFailure(f"{block.where}: continue, but secured differs from the "
                                 "session's first block")
            previous.blocks.append(block)
            continue
        result.append(Session([block]))
    return result


@dataclass
class Command:
    """A `$ ` command of a console block, the output shown after it and the status it
    must exit with."""

    text: str
    shown: list[str]
    status: int = 0


def console_commands(block: Block) -> list[Command]:
    """The commands of a console block; a `$ echo $?` sets the status of the one before."""
    commands: list[Command] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
            commands.append(Command(text, []))
        elif commands:
            commands[-1].shown.append(line)
        i += 1
    if not commands:
        raise DocFailure(f"{block.where}: a console block without a `$ ` command")
    result: list[Command] = []
    for command in commands:
        if command.text.strip() != "echo $?":
            result.append(command)
            continue
        shown = [line.strip() for line in command.shown if line.strip()]
        if not result or not shown or not shown[0].isdigit():
            raise DocFailure(f"{block.where}: `$ echo $?` shows no status of a command")
        result[-1].status = int(shown[0])
    return result


def console_script(block: Block, capture: Path | None = None) -> str:
    """A bash script of a console block's commands, each checked for its status; with
    `capture`, the output of command N also goes to `capture/N.txt`."""
    script: list[str] = []
    for n, command in enumerate(console_commands(block)):
        if capture is None:
            script += [command.text, "__status=$?"]
        else:
            out = shlex.quote(str(capture / f"{n}.txt"))
            script += [f"{{ {command.text}\n}} > {out} 2>&1", f"__status=$?; cat {out}"]
        script.append(f"if [ $__status -ne {command.status} ]; then echo \"doc-test: exit "
                      f"status $__status, not {command.status}: \"{shlex.quote(command.text)}"
                      " >&2; exit 1; fi")
    return "\n".join(script) + "\n"


def output_matches(shown: list[str], actual: list[str]) -> bool:
    """Whether `actual` lines are the `shown` ones, where a line `...` stands for any
    number of lines and `...` within a line for any text."""
    if not shown:
        return not actual
    head, rest = shown[0].rstrip(), shown[1:]
    if head.strip() == "...":
        return any(output_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    if not actual:
        return False
    pattern = ".*".join(re.escape(part) for part in head.split("..."))
    return re.fullmatch(pattern, actual[0].rstrip()) is not None and output_matches(
        rest, actual[1:])


class DocRun:
    """The run of one doc's blocks (see the module docstring)."""

    def __init__(self, doc: Path, work: Path, servers: Servers) -> None:
        self.doc = doc
        self.work = work / "doc"
        self.scripts = work / "scripts"
        self.logs = work / "logs"
        for folder in (self.work, self.scripts, self.logs):
            folder.mkdir(parents=True)
        for name in COPIED:
            shutil.copytree(ROOT / name, self.work / name)
        self.servers = servers
        self.groups: list[int] = []
        """Process groups of the sessions run, stopped when the doc ends."""
        env = {k: v for k, v in os.environ.items()
               if k != "PYTHONPATH" and not (k.startswith("PROCESSOR_") and k not in (
                   "PROCESSOR_KAFKA_HOME", "PROCESSOR_REGISTRY_HOME",
                   "PROCESSOR_REGISTRY_JAVA"))}
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["PROCESSOR_METRICS_HOST"] = "127.0.0.1"
        self.env = env

    # -- text of a block, as run ------------------------------------------------------

    def values(self, block: Block) -> dict[str, Callable[[], str]]:
        def secured_bootstrap() -> str:
            return self.servers.secured().bootstrap

        def admin_settings() -> str:
            return repr(self.servers.secured().admin_settings)

        return {"bootstrap": secured_bootstrap if block.markers.secured
                else self.servers.bootstrap,
                "registry": self.servers.registry,
                "admin_settings": admin_settings}

    def fill(self, value: str, block: Block) -> str:
        values = self.values(block)
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)]() if m.group(1) in values
                      else m.group(0), value)

    def text(self, block: Block) -> str:
        text = block.text
        for old, new in block.markers.substitutes:
            if old not in text:
                raise DocFailure(f"{block.where}: substitute {old!r}, which the block lacks")
            text = text.replace(old, self.fill(new, block))
        shell = block.lang in SHELL and block.file_name is None
        if _REGISTRY.search(text) or (shell and _REGISTRY_LINE.search(text)):
            url = self.servers.registry()
            text = _REGISTRY.sub(url, text)
            if shell:
                text = _REGISTRY_LINE.sub(lambda m: f"{m.group('indent')}echo {url}", text)
        if shell:
            text = _BROKER_LINE.sub(lambda m: self.broker_line(m, block), text)
        if _BOOTSTRAP.search(text):
            text = _BOOTSTRAP.sub(self.values(block)["bootstrap"](), text)
        return text

    def broker_line(self, match: re.Match[str], block: Block) -> str:
        args = shlex.split(match.group("args"))
        indent = match.group("indent")
        if "--secure" not in args:
            if block.markers.secured:
                raise DocFailure(f"{block.where}: a plaintext broker in a secured block")
            return f"{indent}echo {self.servers.bootstrap()}"
        if not block.markers.secured:
            raise DocFailure(f"{block.where}: processor broker --secure needs the secured "
                             "marker")
        folder = args[args.index("--secure") + 1]
        users = [args[i + 1] for i, arg in enumerate(args) if arg == "--user"]
        secured = self.servers.secured()
        secured.write_files(self.work / folder, users)
        return f"{indent}echo {secured.bootstrap}"

    # -- running ----------------------------------------------------------------------

    def run(self, session: Session) -> None:
        block = session.first
        if session.file is not None:
            target = self.work / session.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(self.text(block), encoding="utf-8")
            return
        env = dict(self.env)
        for part in session.blocks:
            env.update({k: self.fill(v, part) for k, v in part.markers.env.items()})
        number = len(self.groups) + 1
        compared: list[tuple[Block, Path]] = []
        """Console blocks whose shown output is compared, and where their output went."""
        if session.kind == "python":
            script = self.scripts / f"{number:02d}.py"
            script.write_text("\n".join(self.text(b) for b in session.blocks),
                              encoding="utf-8")
            argv = [sys.executable, "-c", _PY_RUNNER, str(script)]
        else:
            script = self.scripts / f"{number:02d}.sh"
            parts: list[str] = []
            for k, part in enumerate(self.substituted(b) for b in session.blocks):
                if part.lang == "console":
                    capture = self.scripts / f"{number:02d}-{k}"
                    capture.mkdir()
                    compared.append((part, capture))
                    parts += ["set +e", console_script(part, capture)]
                else:
                    parts += ["set -e", part.text, "set +e"]
            script.write_text("\n".join(parts), encoding="utf-8")
            argv = ["bash", str(script)]
        log = self.logs / f"{number:02d}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=self.work, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.groups.append(proc.pid)
        try:
            status = proc.wait(SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise DocFailure(self.report(session, script, log,
                                         f"did not end in {SESSION_TIMEOUT:g}s")) from None
        if status != 0:
            raise DocFailure(self.report(session, script, log, f"exit status {status}"))
        for part, capture in compared:
            if part.markers.output:
                self.compare(part, capture, script, log)

    def compare(self, block: Block, capture: Path, script: Path, log: Path) -> None:
        """Each command's output is the one the block shows (`output` marker)."""
        for n, command in enumerate(console_commands(block)):
            actual = (capture / f"{n}.txt").read_text(encoding="utf-8",
                                                       errors="replace").splitlines()
            if not output_matches(command.shown, actual):
                shown = "\n".join(command.shown)
                raise DocFailure(f"{block.where}: the output of {command.text!r} is not the "
                                 f"one shown\n--- shown ---\n{shown}\n--- printed ---\n"
                                 + "\n".join(actual))

    def substituted(self, block: Block) -> Block:
        """The block with its substitutions made (console blocks are parsed after)."""
        return Block(block.path, block.line, block.lang, self.text(block), block.markers)

    def report(self, session: Session, script: Path, log: Path, what: str) -> str:
        places = ", ".join(b.where for b in session.blocks)
        output = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        return (f"{places}: {what}\n--- as run ({script.name}) ---\n"
                f"{script.read_text(encoding='utf-8')}\n--- output ---\n{output}")

    def stop(self) -> None:
        """SIGTERM to every session's process group, SIGKILL to what is left after
        `STOP_GRACE` seconds."""
        for group in self.groups:
            _signal(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for group in self.groups:
            while _alive(group) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(group):
                _signal(group, signal.SIGKILL)


def _signal(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
