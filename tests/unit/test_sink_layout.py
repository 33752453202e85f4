"""Landing file names: the offsets they account for, recovery's resume point, overlap detection."""

from __future__ import annotations

import pytest

from omnistream.sink.layout import (
    LandedFile,
    file_name,
    is_temp_name,
    overlapping,
    parse_file_name,
    resume_offset,
    temp_name,
)


def test_name_and_path_follow_the_landing_layout() -> None:
    f = LandedFile("onlinedb.shop.order_items", 2, 100, 199)
    assert f.name == "onlinedb.shop.order_items+2+100+199.parquet"
    assert f.path == "onlinedb.shop.order_items/partition=2/onlinedb.shop.order_items+2+100+199.parquet"
    assert parse_file_name(f.name) == f


@pytest.mark.parametrize("topic", ["a", "masterdata.customers", "x_y-z.1", "stores.order_confirmations.dlq"])
def test_names_round_trip_for_any_topic_name(topic: str) -> None:
    assert parse_file_name(file_name(topic, 0, 0, 0)) == LandedFile(topic, 0, 0, 0)


@pytest.mark.parametrize(
    "name",
    [
        "t+0+5+4.parquet",  # end before start
        "t+0+1.parquet",
        "t+0+1+2.parquet.tmp",
        "t+x+1+2.parquet",
        "notes.txt",
        temp_name("t+0+1+2.parquet", "123-abc"),
    ],
)
def test_other_names_are_not_landing_files(name: str) -> None:
    assert parse_file_name(name) is None


def test_temporary_names_are_hidden_and_recognised() -> None:
    tmp = temp_name("t+0+1+2.parquet", "42-deadbeef")
    assert tmp.startswith(".") and not tmp.endswith(".parquet")
    assert is_temp_name(tmp)
    assert not is_temp_name("t+0+1+2.parquet")


def test_file_name_refuses_a_backwards_range() -> None:
    with pytest.raises(ValueError, match="bad offset range"):
        file_name("t", 0, 10, 9)


def test_resume_offset_is_past_the_highest_end() -> None:
    assert resume_offset([]) is None
    files = [LandedFile("t", 0, 0, 9), LandedFile("t", 0, 10, 24), LandedFile("t", 0, 25, 25)]
    assert resume_offset(files) == 26
    assert resume_offset(list(reversed(files))) == 26


def test_overlaps_are_found_and_tiling_files_are_not_overlaps() -> None:
    tiling = [LandedFile("t", 0, 0, 9), LandedFile("t", 0, 10, 19), LandedFile("t", 0, 20, 20)]
    assert overlapping(tiling) == []
    wide = LandedFile("t", 0, 0, 30)
    assert overlapping([*tiling, wide]) == [(tiling[0], wide), (wide, tiling[1]), (wide, tiling[2])]
    assert overlapping([LandedFile("t", 0, 0, 9), LandedFile("t", 0, 9, 12)]) == [
        (LandedFile("t", 0, 0, 9), LandedFile("t", 0, 9, 12))
    ]
