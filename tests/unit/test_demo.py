"""The demo, the project's main job: three stages on the in-memory broker, every record
accounted for, each kind of bad order dead-lettered with its own reason."""

from __future__ import annotations

import io

from processor.backends.memory import MemoryBroker
from processor.demo.run import generate, run_demo, summary_table


def test_the_demo_accounts_for_every_order_and_names_each_bad_kind() -> None:
    result = run_demo(MemoryBroker(), list(generate(2000)), out=io.StringIO())
    validate, transform, enrich = result.stages
    # Every 50th order is bad, in turn: not Avro, a tampered checksum, not JSON or broken,
    # an amount that is not a number.
    assert validate.stats.dead_letter_reasons == {"decode": 10, "checksum": 10, "invalid": 20}
    assert validate.stats.consumed == 2000
    assert validate.stats.produced == 1960
    for stage in result.stages:
        assert stage.stats.accounted == stage.stats.consumed
    assert transform.stats.consumed == validate.stats.produced
    assert enrich.stats.consumed == transform.stats.produced
    assert len(result.output) == enrich.stats.produced
    assert summary_table(result).splitlines()[-1].split()[:3] == ["enrich", "1,940", "1,940"]
