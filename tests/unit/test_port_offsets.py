"""Tests that start a stack of their own each shift its ports by an offset no other test uses.

Two tests with the same offset would start two Kafkas on the same ports whenever they run at the same time
(two pytest sessions, or a session left running beside another).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
OFFSET = re.compile(r"""(?:port_offset=|_OFFSET = |"--port-offset", ")(\d+)""")


def test_every_own_stack_test_has_a_port_offset_of_its_own() -> None:
    users: dict[int, set[str]] = defaultdict(set)
    for path in TESTS.rglob("*.py"):
        for match in OFFSET.finditer(path.read_text()):
            users[int(match.group(1))].add(str(path.relative_to(TESTS)))
    assert len(users) >= 5, f"expected the own-stack tests' offsets, found {dict(users)}"
    shared = {offset: files for offset, files in users.items() if len(files) > 1}
    assert not shared, f"port offsets used by more than one test file: {shared}"
