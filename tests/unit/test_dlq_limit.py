"""The dead-letter rate limit: a stage whose input is broken wholesale stops with a clear
message; scattered bad records, or a burst shorter than the limit, do not stop it.
On the in-memory broker with a clock the test moves."""

from __future__ import annotations

import pytest

from processor.runtime.dead_letters import DeadLetterLimit
from processor.runtime.stage import Stage, StageFailed
from tests.unit.stage_support import (
    CODEC,
    ManualClock,
    artifacts,
    committed,
    feed,
    identity,
    make_broker,
    options,
    read_all,
)


def test_off_by_default() -> None:
    limit = DeadLetterLimit("s", 1.0, 60.0, 1)
    assert not limit.enabled
    assert limit.check(1000, 1000) is None


def test_share_is_judged_over_the_window_only() -> None:
    clock = ManualClock()
    limit = DeadLetterLimit("s", 0.5, 10.0, 100, clock)
    # 1000 records, all bad, long ago: outside the window by the time of the next check.
    assert limit.check(90, 90) is None  # under min_records
    clock.advance(1.0)
    assert limit.check(1000, 1000) is not None
    clock.advance(11.0)
    assert limit.check(1200, 1010) is None  # the last 200 (over 11 s): 10 bad
    clock.advance(5.0)
    # Judged from the newest sample at least a window old (t=1001): 400 records, 250 bad.
    message = limit.check(1400, 1250, {"decode": 1100, "checksum": 150})
    assert message is not None
    assert message.startswith("stage s: 250 of the last 400 records (62%) were "
                              "dead-lettered within 16s, over the limit of 50%")
    assert "dlq_max_share" in message and "decode: 1100, checksum: 150" in message


def test_a_stage_fed_only_garbage_stops_with_a_clear_message() -> None:
    broker = make_broker(partitions=1)
    feed(broker, [b"not avro %d" % i for i in range(500)])
    clock = ManualClock()
    stage = Stage(options(dlq_max_share=0.5, dlq_window=30.0, dlq_min_records=100,
                          batch_size=50), broker, identity, clock=clock)
    with pytest.raises(StageFailed) as info:
        stage.run()
    message = str(info.value)
    assert "100 of the last 100 records (100%) were dead-lettered" in message
    assert "input looks broken wholesale" in message and "decode: 100" in message
    assert stage.stats.consumed == 100  # it stopped at the first judgement, not at the end
    # What was dead-lettered is durable and committed; the rest waits.
    assert len(read_all(broker, "dlq")) == 100
    assert sum(committed(broker).values()) == 100


def test_scattered_bad_records_do_not_stop_a_stage() -> None:
    broker = make_broker(partitions=1)
    good = [CODEC.encode(a) for a in artifacts(600)]
    values = [b"junk" if i % 5 == 0 else v for i, v in enumerate(good)]  # 20 % bad
    feed(broker, values)
    clock = ManualClock()
    stage = Stage(options(dlq_max_share=0.3, dlq_window=30.0, dlq_min_records=100),
                  broker, identity, clock=clock)
    stats = stage.run(max_records=600)
    assert stats.consumed == 600
    assert stats.dead_lettered == 120


def test_a_short_burst_inside_a_long_window_does_not_stop_a_stage() -> None:
    broker = make_broker(partitions=1)
    good = [CODEC.encode(a) for a in artifacts(1000)]
    values = [b"junk" if 400 <= i < 500 else v for i, v in enumerate(good)]
    feed(broker, values)
    clock = ManualClock()
    stage = Stage(options(dlq_max_share=0.5, dlq_window=60.0, dlq_min_records=100),
                  broker, identity, clock=clock)
    stats = stage.run(max_records=1000)
    assert stats.dead_lettered == 100
