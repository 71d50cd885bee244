"""The fenced blocks of a Markdown file and the `doc-test` markers before them.

A block is a fence of three or more backticks (or tildes), indented or not, with an
optional language; a marker is an HTML comment of its own line, `<!-- doc-test: ... -->`,
on the lines right before a block's fence (several stack). docs/contributing.md lists the
markers; `parse` refuses a marker it does not know, or one that no block follows, so a
mistyped marker fails the docs run instead of being ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL = ("sh", "bash", "shell", "console")
PYTHON = ("python", "py")
RUNNABLE = SHELL + PYTHON

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MARKER = re.compile(r"^[ \t]*<!--\s*doc-test:\s*(?P<body>.*?)\s*-->[ \t]*$")
_FILE_LINE = re.compile(r"^#\s+(?P<name>[\w.-]+\.[A-Za-z]\w*)\s*$")


class MarkerError(ValueError):
    """A `doc-test` marker that is not one of docs/contributing.md's."""


@dataclass
class Markers:
    """What the `doc-test` markers before a block say about it."""

    skip: str | None = None
    """Why the block does not run (`skip (REASON)`)."""
    cont: bool = False
    """Runs in the session of the doc's previous block of its kind (`continue`)."""
    file: str | None = None
    """The block is the content of this file (`file NAME`)."""
    secured: bool = False
    """Runs against the secured broker (`secured`)."""
    substitutes: list[tuple[str, str]] = field(default_factory=list)
    """`substitute TEXT => VALUE`, in order."""
    env: dict[str, str] = field(default_factory=dict)
    """`env NAME=VALUE`: variables of the block's environment."""
    output: bool = False
    """A console block's output is compared with the one it shows (`output`)."""

    def apply(self, body: str, where: str) -> None:
        word, _, rest = body.partition(" ")
        rest = rest.strip()
        if word == "skip":
            reason = re.fullmatch(r"\((.+)\)", rest)
            if reason is None:
                raise MarkerError(f"{where}: skip needs a reason: skip (REASON)")
            self.skip = reason.group(1).strip()
        elif word == "continue" and not rest:
            self.cont = True
        elif word == "secured" and not rest:
            self.secured = True
        elif word == "output" and not rest:
            self.output = True
        elif word == "file" and re.fullmatch(r"[\w./-]+", rest):
            self.file = rest
        elif word == "substitute" and " => " in rest:
            text, _, value = rest.partition(" => ")
            self.substitutes.append((text, value))
        elif word == "env" and re.fullmatch(r"[A-Za-z_]\w*=.*", rest):
            name, _, value = rest.partition("=")
            self.env[name] = value
        else:
            raise MarkerError(f"{where}: unknown doc-test marker {body!r} (see "
                              "docs/contributing.md)")


@dataclass
class Block:
    """One fenced block: where it starts, its language, its text and its markers."""

    path: Path
    line: int
    """The line of the opening fence (1-based)."""
    lang: str
    text: str
    markers: Markers

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """The file the block is, by a `file` marker or a first line `# NAME.EXT`."""
        if self.markers.file:
            return self.markers.file
        first = self.text.split("\n", 1)[0]
        match = _FILE_LINE.match(first)
        return match.group("name") if match else None

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE


def parse(path: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of the Markdown file `path`, in order."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).split("\n")
    blocks: list[Block] = []
    pending: Markers | None = None
    pending_line = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _MARKER.match(line)
        if marker:
            if pending is None:
                pending, pending_line = Markers(), i + 1
            pending.apply(marker.group("body"), f"{path.name}:{i + 1}")
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if pending is not None and line.strip():
                raise MarkerError(f"{path.name}:{pending_line}: a doc-test marker must be "
                                  "right before a fenced block")
            i += 1
            continue
        indent, mark = fence.group("indent"), fence.group("fence")
        info = fence.group("info").strip()
        closing = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else
                        lines[j].lstrip())
            j += 1
        lang = info.split()[0].lower() if info else ""
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n",
                            pending or Markers()))
        pending = None
        i = j + 1
    if pending is not None:
        raise MarkerError(f"{path.name}:{pending_line}: a doc-test marker must be right "
                          "before a fenced block")
    return blocks
