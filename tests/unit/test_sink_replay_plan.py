"""Where a replay really starts: a point inside a file snaps down to that file's start."""

from __future__ import annotations

from omnistream.replay.landing import snap
from omnistream.sink.layout import LandedFile

FILES = [LandedFile("t", 0, 0, 9), LandedFile("t", 0, 10, 19), LandedFile("t", 0, 20, 24)]


def test_from_the_beginning_deletes_everything_newest_first() -> None:
    assert snap(FILES, 0) == (0, list(reversed(FILES)))


def test_a_point_on_a_file_boundary_keeps_the_files_before_it() -> None:
    assert snap(FILES, 10) == (10, [FILES[2], FILES[1]])


def test_a_point_inside_a_file_snaps_down_to_its_start() -> None:
    assert snap(FILES, 15) == (10, [FILES[2], FILES[1]])
    assert snap(FILES, 24) == (20, [FILES[2]])


def test_a_point_past_the_landed_files_deletes_nothing() -> None:
    assert snap(FILES, 25) == (25, [])
    assert snap(FILES, 99) == (25, [])


def test_with_nothing_landed_landing_starts_from_the_beginning() -> None:
    assert snap([], 3) == (0, [])


def test_after_a_gap_landing_resumes_where_the_kept_files_end() -> None:
    # Offsets 10..14 were never landed (deleted by retention first); recovery resumes after the kept file.
    gapped = [LandedFile("t", 0, 0, 9), LandedFile("t", 0, 15, 19)]
    assert snap(gapped, 12) == (10, [gapped[1]])
