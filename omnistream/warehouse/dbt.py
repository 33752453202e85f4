"""Run the dbt project with its environment taken from omnistream's settings.

The dbt profile (dbt/profiles.yml) and project read everything from ``OMNISTREAM_DBT__*`` and
``OMNISTREAM_SNOWFLAKE__*`` variables; this module writes them, for every run, from the settings
(:class:`~omnistream.settings.DbtSettings`, :class:`~omnistream.settings.SnowflakeSettings`) and the run's own
overrides (:class:`DbtRun`), so the settings are the one place their values and defaults are defined. dbt
runs as a subprocess, so one run's global state (adapters, logging, the manifest) never leaks into the
caller or into the next run.

On a DuckDB target a run holds the warehouse lock (:mod:`omnistream.warehouse.lock`) while dbt writes the
DuckDB file, so a history load or another build started meanwhile waits for it instead of failing on
DuckDB's file lock. A history in a bucket (``gs://…``) is loaded into ``raw.history_order_lines`` first, each
file once (:mod:`omnistream.warehouse.history_load`, the production path's equivalent of COPY INTO), and dbt
reads that table: reading the bucket in place through gcsfs costs several requests per file on every
query (a build over the demo's 120 files took four to five times as long as over local files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omnistream.errors import OmnistreamError, UsageError
from omnistream.settings import (
    DBT_PROJECT_DIR,
    Settings,
    dbt_profile_outputs,
    get_settings,
    settings_environment,
)
from omnistream.warehouse.lock import warehouse_lock

logger = logging.getLogger(__name__)

PROJECT_DIR = DBT_PROJECT_DIR
# The profile's outputs: the targets a run can name.
TARGETS = tuple(dbt_profile_outputs())
HISTORY_DATASET = "history"
# The settings sections dbt reads (the profile and the project); no other secret reaches its environment.
DBT_SECTIONS = ("dbt", "snowflake", "gcs")


class DbtError(OmnistreamError):
    """dbt exited non-zero; the message carries the end of its output."""


def check_target(target: str) -> str:
    """``target`` if the profile has it; a usage error naming the profile's targets otherwise."""
    if TARGETS and target not in TARGETS:
        raise UsageError(f"unknown dbt target {target!r}: dbt/profiles.yml has {', '.join(TARGETS)}")
    return target


def adapter(target: str) -> str:
    """The dbt adapter (``duckdb``, ``snowflake``) of one of the profile's targets."""
    return dbt_profile_outputs().get(target, target)


@dataclass(frozen=True)
class DbtRun:
    """What one dbt invocation builds, and where it reads and writes; anything left None is configured
    (``settings.dbt``, see :meth:`configured`)."""

    target: str | None = None
    duckdb_path: Path | None = None
    landing_root: Path | None = None
    history_root: str | None = None  # a directory, or gcs://bucket/prefix
    target_path: Path | None = None  # dbt's target/ (compiled SQL, manifest, run results)
    threads: int | None = None
    # Completeness tests skip rows newer than this (rows in flight while the pipeline runs).
    in_flight_minutes: int | None = None
    # Variables set last, over those from the settings (e.g. a stand-in's connection in a test).
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target is not None:
            check_target(self.target)

    def configured(self, settings: Settings) -> DbtRun:
        """This run with every location that it leaves open taken from ``settings``."""
        dbt = settings.dbt
        return dataclasses.replace(
            self,
            target=self.target or dbt.target,
            duckdb_path=self.duckdb_path or default_duckdb_path(settings),
            landing_root=self.landing_root or default_landing_root(settings),
            history_root=self.history_root or default_history_root(settings),
            target_path=self.target_path or dbt.target_path,
            threads=self.threads or dbt.threads,
            in_flight_minutes=(
                dbt.in_flight_minutes if self.in_flight_minutes is None else self.in_flight_minutes
            ),
        )


def configured_run(settings: Settings | None = None) -> DbtRun:
    """The run the settings describe: their target and locations."""
    return DbtRun().configured(settings or get_settings())


def scheduled_run(settings: Settings | None = None) -> DbtRun:
    """The configured run as the scheduled build makes it while the pipeline runs: rows newer than
    ``airflow.dbt_in_flight_minutes`` are in flight, and the completeness tests skip them."""
    settings = settings or get_settings()
    return DbtRun(in_flight_minutes=settings.airflow.dbt_in_flight_minutes).configured(settings)


def default_duckdb_path(settings: Settings) -> Path:
    """The local warehouse: ``dbt.duckdb_path``, else ``<state dir>/warehouse/omnistream.duckdb``."""
    return settings.dbt.duckdb_path or settings.stack.state_dir / "warehouse" / "omnistream.duckdb"


def default_landing_root(settings: Settings) -> Path:
    """The landed topics: ``dbt.landing_root``, else where the sink lands (``landing.dir`` or
    ``<state dir>/landing``)."""
    return settings.dbt.landing_root or settings.landing.dir or settings.stack.state_dir / "landing"


def default_history_root(settings: Settings) -> str:
    """``dbt.history_root``; else the history the simulator left locally if there is one, else the dataset in
    the GCS bucket."""
    if settings.dbt.history_root:
        return settings.dbt.history_root
    local = settings.stack.state_dir / "simulators" / "history" / HISTORY_DATASET
    if local.is_dir():
        return str(local.resolve())
    return f"gcs://{settings.gcs.bucket}/{HISTORY_DATASET}"


def load_bucket_history(history_root: str, database: Path, settings: Settings) -> None:
    """Load a bucket's history into the DuckDB file (new or changed files only); nothing for a directory."""
    from omnistream.warehouse.history_load import is_bucket_uri, list_history_files, load_history_into

    if not is_bucket_uri(history_root):
        return
    report = load_history_into(database, list_history_files(history_root, settings.gcs), settings.gcs)
    logger.info(
        "history from %s: %d files loaded, %d already loaded", history_root, report.loaded, report.skipped
    )


def dbt_env(
    run: DbtRun, settings: Settings | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for dbt: ``base`` (default: this process's), the settings dbt reads, and the run."""
    settings = settings or get_settings()
    run = run.configured(settings)
    assert run.duckdb_path is not None and run.landing_root is not None  # configured() filled them in
    env = dict(os.environ if base is None else base)
    env.update(settings_environment(settings, sections=DBT_SECTIONS))
    run.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    gcs_emulated = not settings.gcs.endpoint.rstrip("/").endswith("googleapis.com")
    gcs_token = settings.dbt.gcs_token or ("anon" if gcs_emulated else "google_default")
    env.update(
        {
            "OMNISTREAM_DBT__TARGET": str(run.target),
            "OMNISTREAM_DBT__DUCKDB_PATH": str(run.duckdb_path.resolve()),
            "OMNISTREAM_DBT__LANDING_ROOT": str(run.landing_root.resolve()),
            "OMNISTREAM_DBT__HISTORY_ROOT": str(run.history_root),
            "OMNISTREAM_DBT__THREADS": str(run.threads),
            "OMNISTREAM_DBT__IN_FLIGHT_MINUTES": str(run.in_flight_minutes),
            "OMNISTREAM_DBT__GCS_ENDPOINT": settings.dbt.gcs_endpoint or settings.gcs.endpoint,
            "OMNISTREAM_DBT__GCS_TOKEN": gcs_token,
            # gcsfs otherwise asks the storage-control gRPC API about each bucket (60 s per timeout against an
            # emulator, which does not serve it) before falling back to the JSON API it needs anyway.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DBT_PROFILES_DIR": str(PROJECT_DIR),
            "DBT_PROJECT_DIR": str(PROJECT_DIR),
        }
    )
    if run.target_path is not None:
        env["DBT_TARGET_PATH"] = str(run.target_path.resolve())
        env["DBT_LOG_PATH"] = str(run.target_path.resolve() / "logs")
    env.update(run.extra_env)
    return env


def target_dir(run: DbtRun, settings: Settings | None = None) -> Path:
    """Where dbt writes its artifacts for ``run`` (``run_results.json``, the manifest, compiled SQL): the
    run's or the settings' target path, else dbt's own ``DBT_TARGET_PATH`` if set, else dbt/target."""
    target_path = run.target_path or (settings or get_settings()).dbt.target_path
    if target_path is not None:
        return target_path
    from_dbt = os.environ.get("DBT_TARGET_PATH")
    return Path(from_dbt) if from_dbt else PROJECT_DIR / "target"


def result_counts(run: DbtRun, settings: Settings | None = None) -> dict[str, int]:
    """Nodes of the last invocation per status (success, pass, warn, error, fail, skipped)."""
    results = json.loads((target_dir(run, settings) / "run_results.json").read_text())["results"]
    return dict(Counter(r["status"] for r in results))


def dbt_executable() -> str:
    """The dbt beside this interpreter (the project's virtualenv), else the one on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    if beside.exists():
        return str(beside)
    found = shutil.which("dbt")
    if found is None:
        raise DbtError("dbt is not installed: run `pip install -e '.[dev]'` in the project's virtualenv")
    return found


def run_dbt(
    args: Sequence[str],
    run: DbtRun | None = None,
    settings: Settings | None = None,
    check: bool = True,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``dbt <args>`` in the project directory; raise ``DbtError`` if it fails and ``check`` is set."""
    settings = settings or get_settings()
    run = (run or DbtRun()).configured(settings)
    target = str(run.target)
    env = dbt_env(run, settings)
    if adapter(target) == "snowflake" and not env.get("OMNISTREAM_SNOWFLAKE__ACCOUNT"):
        raise UsageError(
            f"dbt target {target!r} is Snowflake but snowflake.account is not set: set "
            "OMNISTREAM_SNOWFLAKE__ACCOUNT (and __USER, __PASSWORD) to the account to build in"
        )
    command = [dbt_executable(), *args]
    with contextlib.ExitStack() as held:
        if adapter(target) == "duckdb":
            database = Path(env["OMNISTREAM_DBT__DUCKDB_PATH"])
            load_bucket_history(env["OMNISTREAM_DBT__HISTORY_ROOT"], database, settings)
            held.enter_context(warehouse_lock(database))
        logger.info("dbt %s (target %s)", " ".join(args), target)
        result = subprocess.run(
            command,
            cwd=PROJECT_DIR,
            env=env,
            text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            check=False,
        )
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-60:])
        raise DbtError(f"dbt {' '.join(args)} failed with exit code {result.returncode}:\n{tail}")
    return result
