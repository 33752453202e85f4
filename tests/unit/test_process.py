from __future__ import annotations

from pathlib import Path

import pytest

from omnistream.settings import Settings
from omnistream.stack import process
from omnistream.stack.manager import Stack


def test_select_adds_what_a_service_needs_in_start_order(tmp_path: Path) -> None:
    stack = Stack(Settings(stack={"state_dir": tmp_path}))
    assert [s.name for s in stack.select(["connect"])] == ["kafka", "connect"]
    assert [s.name for s in stack.select(["registry", "postgres"])] == ["postgres", "kafka", "registry"]
    with pytest.raises(ValueError, match="unknown service"):
        stack.select(["zookeeper"])


def test_tail_returns_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert process.tail(log, 3).splitlines() == ["line 97", "line 98", "line 99"]
    assert process.tail(tmp_path / "missing.log") == "(no log yet)"
