"""Every command's `--help` explains it: a description, examples, help for every flag."""

from __future__ import annotations

import argparse

import pytest

from processor import __version__
from processor.cli.main import build_parser, main


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
             ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and sub-action parser, with the words that select it."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(((*prefix, name), sub))
                found.extend(commands(sub, (*prefix, name)))
    return found


ALL = commands(build_parser())


def test_the_commands() -> None:
    assert sorted(" ".join(words) for words, _ in ALL) == [
        "acls", "acls apply", "acls show",
        "broker", "config", "config check", "demo", "dlq", "dlq inspect", "dlq replay", "keys",
        "keys approve", "keys generate", "keys show", "keys verify", "lag",
        "pipeline", "pipeline check", "pipeline down", "pipeline graph", "pipeline plan",
        "pipeline render", "pipeline schema", "pipeline status", "pipeline up",
        "produce", "registry", "run", "schema", "schema check", "schema register",
        "schema show", "tail",
        "topics", "topics create", "topics delete", "topics describe", "topics list",
    ]


@pytest.mark.parametrize(("words", "parser"), ALL, ids=[" ".join(w) for w, _ in ALL])
def test_help_explains_the_command(
    words: tuple[str, ...], parser: argparse.ArgumentParser, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: processor {' '.join(words)} ")
    assert parser.description and len(parser.description) > 40
    assert parser.description.split()[0] in text
    assert "\nexamples:\n  processor " in text
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(a.help for a in action._choices_actions), words  # one line per action
        else:
            assert action.help, f"processor {' '.join(words)}: {action.dest} has no help"


def test_the_top_level_help_lists_every_command_with_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for words, _ in ALL:
        if len(words) == 1:
            assert f"\n    {words[0]} " in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"processor {__version__}\n"
