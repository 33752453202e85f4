"""Two sinks in one group under load: partitions move when the second joins and when the first leaves;
the buffers of revoked partitions are flushed first, so files never overlap and nothing lands twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnistream.settings import Settings
from tests.support.sink import (
    LoadProducer,
    SinkThread,
    assert_exactly_once,
    drain,
    new_topic,
    poll_until,
    sink_config,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_partitions_move_between_sinks_without_loss_or_duplicates(
    stack_settings: Settings, tmp_path: Path, unique: str
) -> None:
    topic = new_topic(stack_settings, f"sinktest.{unique}.rebalance", partitions=PARTITIONS)
    group = f"sink-{unique}"
    config = sink_config(group, [topic], flush_records=20, flush_seconds=0.3)
    everything = [(topic, p) for p in range(PARTITIONS)]
    load = LoadProducer(stack_settings, topic, rate=400)
    load.start()
    first = SinkThread(stack_settings, tmp_path, config)
    second = SinkThread(stack_settings, tmp_path, config)
    try:
        first.start()
        poll_until(lambda: first.sink.assignment == everything, 60, "the first sink to own every partition")
        poll_until(lambda: first.sink.stats.files >= PARTITIONS, 60, "the first sink to land")

        second.start()
        poll_until(
            lambda: (
                first.sink.assignment
                and second.sink.assignment
                and sorted(first.sink.assignment + second.sink.assignment) == everything
            ),
            60,
            "the partitions to be shared out",
        )
        landed_by_second = second.sink.stats.files
        poll_until(lambda: second.sink.stats.files >= landed_by_second + 2, 60, "the second sink to land")

        first.stop()
        poll_until(lambda: second.sink.assignment == everything, 60, "the second sink to take over")
        landed_by_second = second.sink.stats.files
        poll_until(lambda: second.sink.stats.files >= landed_by_second + PARTITIONS, 60, "landing to go on")
    finally:
        load.stop.set()
        load.join(60)
        for sink in (second, first):
            if sink.is_alive():
                sink.stop()
    assert load.error is None, load.error

    drain(stack_settings, tmp_path, group, [topic], flush_records=20)
    assert_exactly_once(stack_settings, tmp_path, topic, load.sent)
