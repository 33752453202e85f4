"""Names in the landing zone: ``<topic>/partition=<p>/<topic>+<p>+<startOffset>+<endOffset>.parquet``.

The name is the record of what a file holds: every offset from ``startOffset`` to ``endOffset`` (both
inclusive) of that topic partition is accounted for by exactly this file, so the names alone tell recovery
where to resume and tell a reader whether two files overlap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUFFIX = ".parquet"
# The Parquet key-value metadata key of a file's landing note (its range, rows, dead-lettered offsets).
FILE_METADATA_KEY = b"omnistream.landing"
# Kafka topic names are [a-zA-Z0-9._-]+, so "+" cannot occur inside one and splits a name unambiguously.
_NAME = re.compile(r"^(?P<topic>[A-Za-z0-9._-]+)\+(?P<partition>\d+)\+(?P<start>\d+)\+(?P<end>\d+)\.parquet$")
# A file being written: a dot-name that neither our globs (``*.parquet``) nor Hive-style readers pick up.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True, order=True)
class LandedFile:
    """One committed landing file: the offsets ``start``..``end`` (inclusive) of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return file_name(self.topic, self.partition, self.start, self.end)

    @property
    def path(self) -> str:
        """The path relative to the landing root, with "/" separators (also the object name suffix)."""
        return f"{partition_dir(self.topic, self.partition)}/{self.name}"

    def covers(self, offset: int) -> bool:
        return self.start <= offset <= self.end


def partition_dir(topic: str, partition: int) -> str:
    return f"{topic}/partition={partition}"


def file_name(topic: str, partition: int, start: int, end: int) -> str:
    if not 0 <= start <= end:
        raise ValueError(f"bad offset range {start}..{end}")
    return f"{topic}+{partition}+{start}+{end}{SUFFIX}"


def temp_name(final_name: str, token: str) -> str:
    """The name a file is written under before it is renamed to ``final_name``."""
    return f"{TEMP_PREFIX}{final_name}.{token}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def parse_file_name(name: str) -> LandedFile | None:
    """The file a committed landing file name describes, or None for any other name."""
    match = _NAME.match(name)
    if match is None:
        return None
    start, end = int(match["start"]), int(match["end"])
    if start > end:
        return None
    return LandedFile(match["topic"], int(match["partition"]), start, end)


def resume_offset(files: list[LandedFile]) -> int | None:
    """The first offset no committed file covers: where landing continues. None if nothing is landed."""
    return max(f.end for f in files) + 1 if files else None


def overlapping(files: list[LandedFile]) -> list[tuple[LandedFile, LandedFile]]:
    """Pairs (earlier, later) of files of one partition whose offset ranges overlap; there should be none."""
    pairs = []
    reach: LandedFile | None = None  # the file reaching furthest among those seen so far
    for f in sorted(files, key=lambda f: (f.start, f.end)):
        if reach is not None and f.start <= reach.end:
            pairs.append((reach, f))
        if reach is None or f.end > reach.end:
            reach = f
    return pairs


def covering(files: list[LandedFile]) -> dict[LandedFile, LandedFile]:
    """Each file that lies within another file's range, mapped to the widest file covering it.

    A merged file (compaction) covers the small files it was made from until they are deleted; readers
    skip covered files (see :mod:`omnistream.sink`), so every offset is read from exactly one file.
    """
    out: dict[LandedFile, LandedFile] = {}
    # Per topic partition; within one, a cover sorts before what it covers.
    ordered = sorted(files, key=lambda f: (f.topic, f.partition, f.start, -f.end))
    widest: LandedFile | None = None  # the file of this partition reaching furthest so far
    for f in ordered:
        if widest is not None and (widest.topic, widest.partition) != (f.topic, f.partition):
            widest = None
        if widest is not None and widest.end >= f.end:
            out[f] = widest
        elif widest is None or f.end > widest.end:
            widest = f
    return out


def live_files(files: list[LandedFile]) -> list[LandedFile]:
    """The files a reader reads: every listed file that no other listed file covers, in offset order."""
    covered = covering(files)
    return sorted(f for f in files if f not in covered)
