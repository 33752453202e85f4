"""Bad arguments and bad settings of `omnistream dbt …` (and of any command) are one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def omnistream(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, in an empty directory, with no OMNISTREAM_ variable but ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("OMNISTREAM_")}
    environment.update(env or {}, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "omnistream", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_an_unknown_target_argument_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = omnistream(tmp_path, "dbt", "build", "--target", "nosuch")
    assert_one_line(result, 2, "error: unknown dbt target 'nosuch': dbt/profiles.yml has local, snowflake")


def test_an_unknown_target_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = omnistream(tmp_path, "dbt", "build", env={"OMNISTREAM_DBT__TARGET": "nosuch"})
    assert_one_line(
        result,
        2,
        "error: invalid setting OMNISTREAM_DBT__TARGET='nosuch': Value error, dbt.target is one of local, "
        "snowflake (dbt/profiles.yml), not 'nosuch'",
    )


def test_an_invalid_setting_of_any_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = omnistream(tmp_path, "topics", "list", env={"OMNISTREAM_KAFKA__PORT": "abc"})
    assert_one_line(
        result,
        2,
        "error: invalid setting OMNISTREAM_KAFKA__PORT='abc': Input should be a valid integer, unable to "
        "parse string as an integer",
    )


def test_the_snowflake_target_without_an_account_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = omnistream(tmp_path, "dbt", "build", "--target", "snowflake")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: dbt target 'snowflake' is Snowflake but snowflake.account is not set")
    assert "OMNISTREAM_SNOWFLAKE__ACCOUNT" in line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["run-dbt"], "error: say which dbt command to run, e.g. `omnistream dbt run-dbt test`"),
        (
            ["load-history", "--stage-access", "keys"],
            "error: --stage-access is `integration` or `internal`, not 'keys'",
        ),
        (
            ["load-history", "--target", "nosuch"],
            "error: unknown dbt target 'nosuch': dbt/profiles.yml has local, snowflake",
        ),
    ],
)
def test_bad_warehouse_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], line: str) -> None:
    assert_one_line(omnistream(tmp_path, "dbt", *args), 2, line)
