"""The command line: plug-in commands through entry points, errors as one line with their exit code."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from omnistream import cli

runner = CliRunner()


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(cli.app, prog_name="omnistream", args=["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"omnistream {importlib.metadata.version('omnistream')}"


def test_the_simulators_and_producers_plug_in_through_entry_points() -> None:
    plugins = cli.plugin_commands()
    assert plugins["simulate"].value == "simulators.cli:simulate_app"
    assert plugins["produce"].value == "producers.cli:produce_app"
    assert {"simulate", "produce"} <= set(cli.app_commands())


def test_a_negative_rate_is_one_line_and_exit_2() -> None:
    result = runner.invoke(
        cli.app, prog_name="omnistream", args=["simulate", "orders", "--rate", "-1", "--duration", "1"]
    )
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == [
        "error: Invalid value for '--rate': Input should be greater than or equal to 0 "
        "(see omnistream simulate orders --help)"
    ]


def test_an_unknown_command_is_one_line_and_exit_2() -> None:
    result = runner.invoke(cli.app, prog_name="omnistream", args=["simulat"])
    assert result.exit_code == 2, result.output
    assert error_lines(result.output) == ["error: No such command 'simulat'. (see omnistream --help)"]


@pytest.fixture
def broken_plugin(monkeypatch: pytest.MonkeyPatch) -> str:
    entry = importlib.metadata.EntryPoint(
        name="broken", value="omnistream_no_such_plugin.cli:app", group=cli.PLUGIN_GROUP
    )
    monkeypatch.setattr(cli, "plugin_commands", lambda: {"broken": entry})
    return entry.value


def test_a_plugin_that_fails_to_import_is_one_line_and_exit_1(broken_plugin: str) -> None:
    result = runner.invoke(cli.app, prog_name="omnistream", args=["broken", "run", "--fast"])
    assert result.exit_code == 1, result.output
    assert error_lines(result.output) == [
        f"error: command 'broken' could not be loaded: {broken_plugin} raised ModuleNotFoundError: "
        "No module named 'omnistream_no_such_plugin'"
    ]


def test_help_lists_a_broken_plugin_instead_of_failing(broken_plugin: str) -> None:
    result = runner.invoke(cli.app, prog_name="omnistream", args=["--help"])
    assert result.exit_code == 0, result.output
    assert "broken" in result.output
    assert "Traceback" not in result.output


def test_a_core_command_loads_no_plugin() -> None:
    """``omnistream status`` stays light: resolving it imports neither the simulators nor the producers."""
    script = """
import json, sys
import typer
from omnistream import cli
group = typer.main.get_command(cli.app)
command = group.get_command(group.make_context("omnistream", ["status", "--help"]), "status")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("simulators", "producers"))
print(json.dumps({"command": command.name, "loaded": loaded}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == {"command": "status", "loaded": []}
