"""Server versions, pinned once in the repository's ``.env`` and shared with docker-compose.yml."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = PROJECT_ROOT / ".env"
STACK_DIR = PROJECT_ROOT / "stack"


@lru_cache(maxsize=1)
def pinned_versions() -> dict[str, str]:
    """``KEY=value`` lines of ``.env`` whose key ends in ``_VERSION``."""
    versions: dict[str, str] = {}
    for raw in VERSIONS_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key.strip().endswith("_VERSION"):
            versions[key.strip()] = value.strip()
    return versions


def version(name: str) -> str:
    """The pinned version of one server, e.g. ``version("KAFKA")``."""
    try:
        return pinned_versions()[f"{name}_VERSION"]
    except KeyError:
        raise KeyError(f"{name}_VERSION is not pinned in {VERSIONS_FILE}") from None
