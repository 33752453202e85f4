"""Counting plans of ``omnistream.kafka.record_counts``: windows, caps, shared reads, early ends."""

from __future__ import annotations

import socket

import pytest

from omnistream.inspect.records import consumer_groups
from omnistream.kafka.clients import KafkaUnreachable
from omnistream.kafka.record_counts import OffsetRange, PartitionTally, RecordCount, shown
from omnistream.settings import KafkaSettings, Settings


def r(start: int, end: int) -> OffsetRange:
    return OffsetRange("t", 0, start, end)


def test_delivered_offsets_are_counted_and_the_eof_position_ends_the_read() -> None:
    tally = PartitionTally([r(0, 10)], cap=100)
    assert (tally.window_start, tally.window_end, tally.done) == (0, 10, False)
    tally.add([0, 1, 2, 4])  # 3 and 7..9 are markers or aborted records
    tally.add([5, 6])
    assert not tally.done
    tally.end_of_partition(10)
    assert tally.done
    assert tally.result(r(0, 10)) == RecordCount(6, True)


def test_a_record_at_or_past_the_last_offset_ends_the_read_without_an_eof() -> None:
    tally = PartitionTally([r(5, 8)], cap=100)
    tally.add([5, 7])
    assert tally.done and tally.result(r(5, 8)) == RecordCount(2, True)
    beyond = PartitionTally([r(0, 3)], cap=100)  # a range that ends before the partition does
    beyond.add([0, 4, 5])  # 1..3 are markers: 4 is the first record after the range
    assert beyond.done and beyond.result(r(0, 3)) == RecordCount(1, True)


def test_overlapping_ranges_share_one_read() -> None:
    whole, lag_a, lag_b = r(0, 20), r(12, 20), r(19, 20)
    tally = PartitionTally([whole, lag_a, lag_b], cap=100)
    assert (tally.window_start, tally.window_end) == (0, 20)
    tally.add(list(range(0, 12, 2)))  # the even offsets are records
    tally.add(list(range(12, 20, 2)))
    tally.end_of_partition(20)
    assert tally.result(whole) == RecordCount(10, True)
    assert tally.result(lag_a) == RecordCount(4, True)  # 12, 14, 16, 18
    assert tally.result(lag_b) == RecordCount(0, True)  # offset 19 is a marker: no lag


def test_beyond_the_cap_the_unread_offsets_count_as_an_upper_bound() -> None:
    whole, near = r(0, 1000), r(995, 1000)
    tally = PartitionTally([whole, near], cap=10)
    assert (tally.window_start, tally.window_end) == (990, 1000)
    tally.add(list(range(990, 999)))  # 999 is a marker
    tally.end_of_partition(1000)
    assert tally.result(whole) == RecordCount(990 + 9, False)
    assert tally.result(near) == RecordCount(4, True)
    assert shown(990 + 9, False) == "≤ 999" and str(tally.result(near)) == "4"


def test_an_early_end_leaves_the_rest_as_offsets() -> None:
    """The end of a read_committed read is the last stable offset: an open transaction's offsets follow."""
    tally = PartitionTally([r(0, 10)], cap=100)
    tally.add([0, 1, 2, 3])
    tally.end_of_partition(5)  # offset 4 a marker, 5..9 an open transaction
    assert tally.result(r(0, 10)) == RecordCount(4 + 5, False)


def test_empty_ranges_need_no_read() -> None:
    tally = PartitionTally([r(7, 7)], cap=100)
    assert tally.done and tally.result(r(7, 7)) == RecordCount(0, True)
    assert PartitionTally([r(0, 5)], cap=0).result(r(0, 5)) == RecordCount(5, False)


def test_an_unreachable_cluster_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    settings = Settings(kafka=KafkaSettings(port=port))
    with pytest.raises(KafkaUnreachable, match=f"127.0.0.1:{port} did not answer.*omnistream stack up"):
        consumer_groups(settings)
