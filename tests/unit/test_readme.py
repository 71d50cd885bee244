"""The README matches the code: its handler example runs as written, its commands table is
the CLI's, and its layout lists the folders there are."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from processor import Artifact, InvalidArtifact
from processor.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match is not None, f"no section {title!r}"
    return match.group(1)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_readme_handler_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    example = next(b for b in blocks if b.startswith("# my_handlers.py"))
    (tmp_path / "my_handlers.py").write_text(example, encoding="utf-8")
    result = subprocess.run([sys.executable, "my_handlers.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = re.search(r"^`python my_handlers.py` prints .*?: `([^`]+)`", README,
                        flags=re.S | re.M)
    assert printed is not None, "the README does not say what `python my_handlers.py` prints"
    assert result.stdout == f"{printed.group(1)}\n" == "HELLO, STREAM True\n"

    sys.path.insert(0, str(tmp_path))
    try:
        import my_handlers  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))

    out = my_handlers.shout(Artifact.new("abc"))
    assert out.payload == b"ABC"
    assert my_handlers.shout(Artifact.new("x", meta={"skip": True})) is None
    with pytest.raises(InvalidArtifact, match="empty payload"):
        my_handlers.shout(Artifact.new(b""))


def test_the_commands_table_is_the_cli() -> None:
    rows = re.findall(r"^\| `processor ([^`]+)` \|", section("Commands"), flags=re.M)
    commands = subcommands(build_parser())
    documented = {row.split()[0] for row in rows}
    assert documented == set(commands)
    for row in rows:
        words = row.split()
        parser = commands[words[0]]
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            # A command group: the row's first action (`show\\|apply`: show).
            parser = subcommands(parser)[words[1].split("\\|")[0]]
        for flag in re.findall(r"--[a-z][a-z-]*", row):
            assert flag in parser._option_string_actions, f"processor {words[0]}: no {flag}"


def test_the_layout_lists_the_packages_there_are() -> None:
    listed = re.findall(r"^(processor/\S+/)", section("Layout"), flags=re.M)
    assert listed
    for path in listed:
        assert (ROOT / path / "__init__.py").is_file(), path
    packages = {p.parent.name for p in (ROOT / "processor").glob("*/__init__.py")}
    assert {p.split("/")[1] for p in listed} == packages
