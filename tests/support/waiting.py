"""Waiting in the integration tests: poll a condition until it holds, or fail naming it at the deadline."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0, every_s: float = 0.2) -> None:
    """Until ``check()`` is true; an AssertionError naming ``what`` once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)
