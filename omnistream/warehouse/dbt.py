"""Run the dbt project with its environment taken from omnistream's settings.

The dbt profile (dbt/profiles.yml) reads everything from ``OMNISTREAM_DBT__*`` and ``OMNISTREAM_SNOWFLAKE__*``
variables; this module fills in the ones not already set: the DuckDB file, the landing root and the history
location under the stack's state directory, and the GCS endpoint. dbt runs as a subprocess, so one run's
global state (adapters, logging, the manifest) never leaks into the caller or into the next run.

On the local target a run holds the warehouse lock (:mod:`omnistream.warehouse.lock`) while dbt writes the
DuckDB file, so a history load or another build started meanwhile waits for it instead of failing on
DuckDB's file lock. A history in a bucket (``gs://…``) is loaded into ``raw.history_order_lines`` first, each
file once (:mod:`omnistream.warehouse.history_load`, the production path's equivalent of COPY INTO), and dbt
reads that table: reading the bucket in place through gcsfs costs several requests per file on every
query (a build over the demo's 120 files took four to five times as long as over local files).
"""

from __future__ import annotations

import contextlib
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

from omnistream.settings import Settings, get_settings
from omnistream.warehouse.lock import warehouse_lock

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt"
TARGETS = ("local", "snowflake")
HISTORY_DATASET = "history"


class DbtError(RuntimeError):
    """dbt exited non-zero; the message carries the end of its output."""


@dataclass(frozen=True)
class DbtRun:
    """Where one dbt invocation reads and writes; anything left None comes from the settings."""

    target: str = "local"
    duckdb_path: Path | None = None
    landing_root: Path | None = None
    history_root: str | None = None  # a directory, or gcs://bucket/prefix
    target_path: Path | None = None  # dbt's target/ (compiled SQL, manifest, run results)
    threads: int = 2
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown dbt target {self.target!r}; expected one of {TARGETS}")


def default_duckdb_path(settings: Settings) -> Path:
    return settings.stack.state_dir / "warehouse" / "omnistream.duckdb"


def default_landing_root(settings: Settings) -> Path:
    return settings.stack.state_dir / "landing"


def default_history_root(settings: Settings) -> str:
    """The history the simulator left locally if there is one, else the dataset in the GCS bucket."""
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
    """The environment for dbt: ``base`` (default: this process's) plus the run's locations."""
    settings = settings or get_settings()
    env = dict(os.environ if base is None else base)
    duckdb_path = run.duckdb_path or Path(
        env.get("OMNISTREAM_DBT__DUCKDB_PATH") or default_duckdb_path(settings)
    )
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    landing = run.landing_root or Path(
        env.get("OMNISTREAM_DBT__LANDING_ROOT") or default_landing_root(settings)
    )
    history = run.history_root or env.get("OMNISTREAM_DBT__HISTORY_ROOT") or default_history_root(settings)
    gcs_emulated = not settings.gcs.endpoint.rstrip("/").endswith("googleapis.com")
    env.update(
        {
            "OMNISTREAM_DBT__TARGET": run.target,
            "OMNISTREAM_DBT__DUCKDB_PATH": str(duckdb_path.resolve()),
            "OMNISTREAM_DBT__LANDING_ROOT": str(landing.resolve()),
            "OMNISTREAM_DBT__HISTORY_ROOT": history,
            "OMNISTREAM_DBT__THREADS": str(run.threads),
            "OMNISTREAM_DBT__GCS_ENDPOINT": settings.gcs.endpoint,
            "OMNISTREAM_DBT__GCS_TOKEN": "anon" if gcs_emulated else "google_default",
            "OMNISTREAM_GCS__PROJECT": settings.gcs.project,
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


def target_dir(run: DbtRun) -> Path:
    """Where dbt writes its artifacts for ``run`` (``run_results.json``, the manifest, compiled SQL)."""
    if run.target_path is not None:
        return run.target_path
    configured = os.environ.get("DBT_TARGET_PATH")
    return Path(configured) if configured else PROJECT_DIR / "target"


def result_counts(run: DbtRun) -> dict[str, int]:
    """Nodes of the last invocation per status (success, pass, warn, error, fail, skipped)."""
    results = json.loads((target_dir(run) / "run_results.json").read_text())["results"]
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
    run = run or DbtRun()
    settings = settings or get_settings()
    env = dbt_env(run, settings)
    command = [dbt_executable(), *args]
    with contextlib.ExitStack() as held:
        if run.target == "local":
            database = Path(env["OMNISTREAM_DBT__DUCKDB_PATH"])
            load_bucket_history(env["OMNISTREAM_DBT__HISTORY_ROOT"], database, settings)
            held.enter_context(warehouse_lock(database))
        logger.info("dbt %s (target %s)", " ".join(args), run.target)
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
