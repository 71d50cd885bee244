"""The docs runner's own rules (tests/docs/markdown.py, tests/docs/runner.py), on small
Markdown texts and without servers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.docs.markdown import MarkerError, parse
from tests.docs.runner import (
    DocFailure,
    DocRun,
    Outcome,
    Servers,
    console_script,
    output_matches,
    sessions,
)

DOC = Path("doc.md")


def no_server() -> str:
    raise AssertionError("no server in these tests")


def runner(tmp_path: Path, bootstrap: str = "127.0.0.1:39092") -> DocRun:
    return DocRun(DOC, tmp_path, Servers(lambda: bootstrap, lambda: "http://r/apis/ccompat/v7",
                                         no_server))  # type: ignore[arg-type]


def run_doc(tmp_path: Path, text: str) -> tuple[DocRun, Outcome]:
    outcome = Outcome()
    run = runner(tmp_path)
    try:
        for session in sessions(parse(DOC, text), outcome):
            run.run(session)
    finally:
        run.stop()
    return run, outcome


def test_markers_stack_before_a_block_and_indented_fences_are_blocks() -> None:
    text = ("intro\n\n<!-- doc-test: secured -->\n<!-- doc-test: env A=1 -->\n"
            "<!-- doc-test: substitute x y => z -->\n```sh\necho x y\n```\n\n"
            "* item:\n\n  ```\n  out\n  ```\n")
    first, second = parse(DOC, text)
    assert (first.lang, first.line, first.text) == ("sh", 6, "echo x y\n")
    assert first.markers.secured and first.markers.env == {"A": "1"}
    assert first.markers.substitutes == [("x y", "z")]
    assert (second.lang, second.text) == ("", "out\n")


@pytest.mark.parametrize("text, message", [
    ("<!-- doc-test: skipp (x) -->\n```sh\ntrue\n```\n", "unknown doc-test marker"),
    ("<!-- doc-test: skip -->\n```sh\ntrue\n```\n", "skip needs a reason"),
    ("<!-- doc-test: continue -->\nprose\n```sh\ntrue\n```\n", "right before a fenced"),
    ("text\n<!-- doc-test: continue -->\n", "right before a fenced"),
])
def test_a_marker_that_means_nothing_fails(text: str, message: str) -> None:
    with pytest.raises(MarkerError, match=message):
        parse(DOC, text)


def test_files_skips_text_and_sessions_are_counted() -> None:
    text = ("```python\n# handlers.py\nX = 1\n```\n"
            "<!-- doc-test: skip (needs a cluster) -->\n```sh\nkubectl get pods\n```\n"
            "```text\noutput\n```\n```sh\nA=1\n```\n<!-- doc-test: continue -->\n"
            "```sh\necho $A\n```\n")
    outcome = Outcome()
    found = sessions(parse(DOC, text), outcome)
    assert [(s.file, len(s.blocks)) for s in found] == [("handlers.py", 1), (None, 2)]
    assert (outcome.written, outcome.text, outcome.skipped) == (
        1, 1, [("doc.md:6", "needs a cluster")])


def test_a_console_block_runs_its_commands_with_the_status_it_shows() -> None:
    block, = parse(DOC, "```console\n$ false \\\n    --x\nsome output\n$ echo $?\n1\n"
                        "$ true\n```\n")
    script = console_script(block)
    assert "false \\\n    --x\n__status=$?\nif [ $__status -ne 1 ]" in script
    assert "echo $?" not in script.replace("__status=$?", "")
    assert "true\n__status=$?\nif [ $__status -ne 0 ]" in script


def test_addresses_and_broker_lines_become_the_test_servers(tmp_path: Path) -> None:
    text = ("<!-- doc-test: substitute NAME => {bootstrap} -->\n```sh\n"
            "processor broker &       # prints 127.0.0.1:PORT\n"
            "processor registry &\n"
            "x --bootstrap-servers 127.0.0.1:PORT,kafka:9092 --url "
            "http://127.0.0.1:PORT/apis/ccompat/v7 NAME\n```\n")
    block, = parse(DOC, text)
    assert runner(tmp_path).text(block).splitlines() == [
        "echo 127.0.0.1:39092", "echo http://r/apis/ccompat/v7",
        "x --bootstrap-servers 127.0.0.1:39092,127.0.0.1:39092 --url "
        "http://r/apis/ccompat/v7 127.0.0.1:39092"]


def test_blocks_run_in_order_in_one_folder_and_continue_shares_a_session(
        tmp_path: Path) -> None:
    text = ("```python\n# shout.py\ndef shout(s):\n    return s.upper()\n```\n"
            "```sh\nA=hello\nls examples schemas > listing.txt\n```\n"
            "<!-- doc-test: continue -->\n```sh\necho $A > a.txt\n```\n"
            "```python\nfrom shout import shout\n\n\ndef test_it():\n"
            "    open('b.txt', 'w').write(shout(open('a.txt').read()))\n```\n")
    run, _ = run_doc(tmp_path, text)
    assert (run.work / "b.txt").read_text() == "HELLO\n"


@pytest.mark.parametrize("text, message", [
    ("```sh\ntrue\nfalse\necho never\n```\n", "exit status 1"),
    ("```console\n$ false\n```\n", "exit status 1, not 0: false"),
    ("```python\ndef test_it():\n    assert 1 == 2\n```\n", "AssertionError"),
    ("<!-- doc-test: substitute nothing => x -->\n```sh\ntrue\n```\n", "lacks"),
])
def test_a_failing_block_fails_with_what_ran_and_its_output(
        tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DocFailure, match=message):
        run_doc(tmp_path, text)


def test_background_commands_are_stopped_when_the_doc_ends(tmp_path: Path) -> None:
    run, _ = run_doc(tmp_path, "```sh\nsleep 300 &\necho $! > pid\n```\n")
    pid = int((run.work / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                               text=True).stdout.strip()
        if not state or state.startswith("Z"):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("the background command still runs")


@pytest.mark.parametrize("shown, actual, matches", [
    (["a", "b"], ["a", "b"], True),
    (["a", "b"], ["a", "c"], False),
    (["a"], ["a", "b"], False),
    (["x ... z"], ["x yy z"], True),
    (["a", "...", "z"], ["a", "z"], True),
    (["a", "...", "z"], ["a", "b", "c", "z"], True),
    (["a", "...", "z"], ["a", "b"], False),
    ([], [], True),
])
def test_shown_output_matches_with_ellipses(shown: list[str], actual: list[str],
                                            matches: bool) -> None:
    assert output_matches(shown, actual) is matches


def test_an_output_marker_compares_what_a_console_block_shows(tmp_path: Path) -> None:
    good = ("<!-- doc-test: output -->\n```console\n$ printf 'a\\nb b\\nc\\n'\na\n...\nc\n"
            "$ sh -c 'echo no >&2; exit 3'\nno\n$ echo $?\n3\n```\n")
    run_doc(tmp_path / "good", good)
    bad = "<!-- doc-test: output -->\n```console\n$ echo yes\nno\n```\n"
    with pytest.raises(DocFailure, match="the output of 'echo yes' is not the one shown"):
        run_doc(tmp_path / "bad", bad)


def test_a_shell_block_and_a_console_block_can_share_a_session(tmp_path: Path) -> None:
    text = ("```sh\nB=2\n```\n<!-- doc-test: continue -->\n```console\n$ test $B = 2\n"
            "$ false\n$ echo $?\n1\n```\n<!-- doc-test: continue -->\n```sh\nfalse\n"
            "echo never > never.txt\n```\n")
    with pytest.raises(DocFailure, match="exit status 1"):
        run_doc(tmp_path, text)
    assert not (tmp_path / "doc" / "never.txt").exists()


def test_continue_joins_only_the_block_run_just_before() -> None:
    text = ("```sh\ntrue\n```\n```python\nx = 1\n```\n<!-- doc-test: continue -->\n"
            "```sh\ntrue\n```\n")
    with pytest.raises(DocFailure, match="not a shell block"):
        sessions(parse(DOC, text), Outcome())
