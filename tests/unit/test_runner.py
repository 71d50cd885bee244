"""Transactional id slots: distinct for live replicas, reused after one dies."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from processor.runtime.runner import claim_transactional_id


def test_live_replicas_get_distinct_ids_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    host = socket.gethostname()
    first, lock0 = claim_transactional_id("stage-g", tmp_path)
    second, lock1 = claim_transactional_id("stage-g", tmp_path)
    assert first == f"stage-g-{host}-0"
    assert second == f"stage-g-{host}-1"
    lock0.close()  # the process holding slot 0 died
    third, lock2 = claim_transactional_id("stage-g", tmp_path)
    assert third == first
    other, lock3 = claim_transactional_id("other/stage", tmp_path)
    assert other == f"other/stage-{host}-0"
    for lock in (lock1, lock2, lock3):
        lock.close()


def test_a_killed_process_releases_its_slot(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path;"
        "from processor.runtime.runner import claim_transactional_id as c;"
        f"i, h = c('s', Path({str(tmp_path)!r})); print(i, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        held = child.stdout.readline().strip()
        mine, lock = claim_transactional_id("s", tmp_path)
        assert mine != held
        lock.close()
        child.kill()
        child.wait(10)
        again, lock = claim_transactional_id("s", tmp_path)
        assert again == held
        lock.close()
    finally:
        child.kill()
        child.wait(10)
