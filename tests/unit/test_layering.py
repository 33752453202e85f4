"""The core imports nothing above it: no module under omnistream/ imports producers or simulators.

They build on the core (their commands plug in through entry points, see omnistream/cli.py), never the
reverse. Every import counts, a lazy one inside a function too, so the whole syntax tree is walked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "omnistream"
ABOVE_THE_CORE = ("producers", "simulators")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, at any depth; relative imports stay in their package."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def reaches_above(module: str) -> bool:
    return module.split(".")[0] in ABOVE_THE_CORE


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_core_has_modules_to_check() -> None:
    assert len(core_modules()) > 50
    assert CORE / "cli.py" in core_modules()


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE.parent)))
def test_core_module_imports_nothing_above_the_core(path: Path) -> None:
    offending = [f"line {line}: {module}" for line, module in imported_modules(path) if reaches_above(module)]
    assert not offending, f"{path.relative_to(CORE.parent)} imports " + ", ".join(offending)


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def run():\n    from simulators.gcs import storage_client\n    import producers.cli\n")
    assert [m for _, m in imported_modules(module) if reaches_above(m)] == ["simulators.gcs", "producers.cli"]
