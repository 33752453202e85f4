"""Airflow as part of the local stack: the environment of its three processes and their one-time preparation.

Three programs make the set: the scheduler (with the LocalExecutor, which runs the tasks), the DAG processor
(parses ``airflow/dags``) and the API server (REST API v2, the execution API the tasks report to, and the UI).
Everything they share comes from :func:`airflow_environment`, so all three always see one configuration:

- ``AIRFLOW_HOME`` is ``<state>/airflow`` (logs, the generated ``airflow.cfg``, the secrets file);
- the metadata database is a database and role of its own in the stack's PostgreSQL;
- the secrets (the role's password, the API's JWT secret and session key, the Fernet key) are generated once
  into ``<state>/airflow/secrets.env`` (mode 0600, under the state directory, never in the repository);
- authentication is Airflow's simple auth manager with every user an admin: acceptable **only** because the
  API server listens on loopback for one developer's local stack;
- the omnistream settings reach the tasks as ``OMNISTREAM_*`` variables, so ``get_settings()`` in a task sees
  what the caller configured, whatever the processes' working directory.

:func:`prepare_airflow` must have run (it is idempotent and quick when nothing changed) before the programs
start: it creates the role and the database, runs ``airflow db migrate`` and sets the pool
``omnistream_warehouse`` to one slot (both DAGs' warehouse tasks run in it: one DuckDB writer at a time).

Start the API server first and stop it last: the tasks report their state to it. The scheduler stops on
SIGTERM once its running task has finished (LocalExecutor), so give it the length of a dbt build to do so;
a build running when SIGTERM reached the scheduler's whole process group still finished and succeeded.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

import omnistream
from omnistream.errors import OmnistreamError
from omnistream.settings import Settings, settings_environment
from omnistream.stack.layout import Layout
from omnistream.warehouse.lock import AIRFLOW_POOL

log = logging.getLogger(__name__)

AIRFLOW_BIN = Path(sys.executable).with_name("airflow")
DAGS_FOLDER = Path(omnistream.__file__).resolve().parents[1] / "airflow" / "dags"
SECRETS_FILE = "secrets.env"
# What the last successful `airflow db migrate` left: the Airflow version and the schema revision.
MIGRATED_FILE = "migrated.json"
# One task at a time: the local warehouse is one DuckDB file, which only one process may open for writing,
# and both DAGs write it (a dbt build overlapping the history load would fail on DuckDB's file lock). It is
# also the smallest set on two cores: one forked LocalExecutor worker (~50 MB PSS) per slot.
PARALLELISM = 1
# Task processes talk to the API server's execution API; on two busy cores (a dbt build, DAG parsing) a call
# can take longer than Airflow's 5 s default, and a task whose heartbeats fail is killed.
EXECUTION_API_TIMEOUT_S = 30


class AirflowSetupError(OmnistreamError):
    """Airflow could not be prepared; the message says what failed and what to do."""


@dataclass(frozen=True)
class AirflowSecrets:
    db_password: str
    jwt_secret: str
    secret_key: str
    fernet_key: str


# The secrets file's keys, in the order written; values are generated when missing.
_SECRET_KEYS = {
    "AIRFLOW_DB_PASSWORD": "db_password",
    "AIRFLOW__API_AUTH__JWT_SECRET": "jwt_secret",
    "AIRFLOW__API__SECRET_KEY": "secret_key",
    "AIRFLOW__CORE__FERNET_KEY": "fernet_key",
}


def _generate(field: str) -> str:
    if field == "fernet_key":  # Fernet's own format: 32 random bytes, url-safe base64
        return base64.urlsafe_b64encode(os.urandom(32)).decode()
    # 64 bytes: the JWT signing key's minimum for HS512, which PyJWT warns about below that.
    return secrets.token_urlsafe(64)


def airflow_home(settings: Settings) -> Path:
    return Layout.from_settings(settings).root / "airflow"


def secrets_path(settings: Settings) -> Path:
    return airflow_home(settings) / SECRETS_FILE


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise preparation between processes (two callers must not generate two different passwords)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_secrets_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = value.strip()
    return values


def ensure_secrets(settings: Settings) -> AirflowSecrets:
    """The secrets from ``<state>/airflow/secrets.env``, generating any that are missing (file mode 0600)."""
    home = airflow_home(settings)
    path = home / SECRETS_FILE
    values = _read_secrets_file(path)
    if not all(values.get(key) for key in _SECRET_KEYS):
        with _locked(home):
            values = _read_secrets_file(path)  # another process may have written them meanwhile
            missing = [key for key in _SECRET_KEYS if not values.get(key)]
            if missing:
                values.update({key: _generate(_SECRET_KEYS[key]) for key in missing})
                lines = ["# Airflow's secrets for this local stack; generated by omnistream, keep private."]
                lines += [f"{key}={values[key]}" for key in _SECRET_KEYS]
                fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join(lines) + "\n")
                os.replace(path.with_suffix(".tmp"), path)
                log.info("generated %s in %s", ", ".join(missing), path)
    path.chmod(0o600)
    return AirflowSecrets(**{field: values[key] for key, field in _SECRET_KEYS.items()})


def _database_url(settings: Settings, password: str, driver: str) -> str:
    pg, af = settings.postgres, settings.airflow
    credentials = f"{quote(af.user, safe='')}:{quote(password, safe='')}"
    return f"postgresql+{driver}://{credentials}@{pg.host}:{pg.port}/{quote(af.database, safe='')}"


def airflow_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every variable the scheduler, DAG processor and API server need: ``AIRFLOW_*`` and ``OMNISTREAM_*``.

    ``OMNISTREAM_*`` variables of ``base`` (default: this process's environment) pass through (the secrets
    set there among them, which ``settings`` leaves out), then ``settings`` itself on top, with dbt's
    artifacts under the state directory unless ``dbt.target_path`` says otherwise. Merge the result over
    the rest of the environment (PATH, HOME, …) to start a process. Generates the secrets file at first use.
    """
    af = settings.airflow
    home = airflow_home(settings)
    keys = ensure_secrets(settings)
    base = os.environ if base is None else base
    env = {key: value for key, value in base.items() if key.startswith("OMNISTREAM_")}
    env.update(settings_environment(settings, secrets=False))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # The stack's DAGs are meant to run once it is up; nobody is there to unpause them.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # Tasks report to the API server's execution API (the default assumes localhost:8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{af.url}/execution/",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": str(EXECUTION_API_TIMEOUT_S),
            "AIRFLOW__API__HOST": af.host,
            "AIRFLOW__API__PORT": str(af.port),
            "AIRFLOW__API__WORKERS": "1",
            # Local stack only: anyone who reaches the loopback port is an admin, no login page. Any shared
            # or production Airflow uses a real auth manager (FAB, Keycloak, …) instead.
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # psycopg2 for the synchronous engine, the driver Airflow documents; the API server's async
            # engine would default to asyncpg, which is not installed, so it uses psycopg 3 (installed).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _database_url(settings, keys.db_password, "psycopg2"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": _database_url(settings, keys.db_password, "psycopg"),
            "AIRFLOW__API_AUTH__JWT_SECRET": keys.jwt_secret,
            "AIRFLOW__API__SECRET_KEY": keys.secret_key,
            "AIRFLOW__CORE__FERNET_KEY": keys.fernet_key,
            # The scheduler's log server lets the UI show a running task's log (without it the API server
            # logs an error for every such view). Its default port (8793) would be shared by every Airflow
            # on the machine, so it takes the port after the API server's. Airflow binds it on all
            # interfaces; it answers only requests signed with [api] secret_key.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(af.port + 1),
        }
    )
    if settings.dbt.target_path is None:
        # dbt's artifacts (manifest, run results, logs) of scheduled runs stay under the state directory,
        # away from the repository's dbt/target, which a developer's own dbt runs use.
        env["OMNISTREAM_DBT__TARGET_PATH"] = str((home / "dbt" / "target").resolve())
    return env


def process_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A whole environment to start an Airflow process with: ``base`` (default: this process's) without its
    own ``AIRFLOW_*`` variables, plus :func:`airflow_environment`."""
    base = os.environ if base is None else base
    env = {key: value for key, value in base.items() if not key.startswith("AIRFLOW")}
    env.update(airflow_environment(settings, base))
    return env


def airflow_commands(settings: Settings) -> dict[str, list[str]]:
    """Program name → argv of the three long-running Airflow processes, listed in start order (start them
    with :func:`process_environment`, after :func:`prepare_airflow`; stop them in reverse order)."""
    airflow = str(AIRFLOW_BIN)
    af = settings.airflow
    return {
        "airflow-api-server": [airflow, "api-server", "--host", af.host, "--port", str(af.port)],
        "airflow-scheduler": [airflow, "scheduler"],
        "airflow-dag-processor": [airflow, "dag-processor"],
    }


def _airflow_version() -> str:
    return version("apache-airflow-core")


def _schema_revision(settings: Settings) -> str | None:
    """The metadata database's Alembic revision, or None before the first migration."""
    pg = settings.postgres
    with psycopg.connect(pg.dsn(dbname=settings.airflow.database), connect_timeout=10) as conn:
        exists = conn.execute("select to_regclass('public.alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute("select version_num from alembic_version").fetchone()
        return row[0] if row else None


def _ensure_role_and_database(settings: Settings, password: str) -> None:
    """The Airflow role (its password: the secrets file's) and its database, as the stack's superuser."""
    pg, af = settings.postgres, settings.airflow
    role, database = sql.Identifier(af.user), sql.Identifier(af.database)
    with psycopg.connect(pg.dsn(dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", [af.user]).fetchone()
        # The secrets file is the truth: setting the password each time heals a regenerated file.
        verb = "alter" if exists else "create"
        statement = sql.SQL(verb + " role {} with login password {}").format(role, sql.Literal(password))
        conn.execute(statement)
        if not conn.execute("select 1 from pg_database where datname = %s", [af.database]).fetchone():
            conn.execute(sql.SQL("create database {} owner {}").format(database, role))
            log.info("created database %s owned by %s", af.database, af.user)


def prepare_airflow(settings: Settings) -> None:
    """Make Airflow ready to start: secrets, role and database, ``airflow db migrate``. Idempotent.

    The migration (about 7 s) runs only when the database's schema revision or the installed Airflow
    differs from what the last successful migration recorded in ``<state>/airflow/migrated.json``.
    """
    if not AIRFLOW_BIN.exists():
        raise AirflowSetupError(
            f"Airflow is not installed beside {sys.executable}: run `pip install -e '.[dev]'` in the "
            "project's virtualenv (`make install`)"
        )
    home = airflow_home(settings)
    keys = ensure_secrets(settings)
    try:
        _ensure_role_and_database(settings, keys.db_password)
        revision = _schema_revision(settings)
    except psycopg.OperationalError as exc:
        raise AirflowSetupError(
            f"cannot reach the stack's PostgreSQL at {settings.postgres.host}:{settings.postgres.port} "
            f"({exc}); start it with `omnistream stack up`"
        ) from exc
    stamp_path = home / MIGRATED_FILE
    expected = {"airflow": _airflow_version(), "database": settings.airflow.database, "revision": revision}
    if revision is not None and stamp_path.exists() and json.loads(stamp_path.read_text()) == expected:
        log.debug("Airflow's metadata database is current (revision %s)", revision)
        _ensure_pool(settings)
        return
    env = process_environment(settings)  # before the lock: it may take it to write missing secrets
    with _locked(home):
        result = subprocess.run(
            [str(AIRFLOW_BIN), "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise AirflowSetupError(
                f"`airflow db migrate` failed with exit code {result.returncode}:\n{tail}"
            )
        expected["revision"] = _schema_revision(settings)
        stamp_path.write_text(json.dumps(expected) + "\n")
    log.info("Airflow's metadata database migrated to revision %s", expected["revision"])
    _ensure_pool(settings)


def _pool_slots(settings: Settings, pool: str) -> int | None:
    """The pool's slots as the metadata database has them, or None if there is no such pool."""
    with psycopg.connect(settings.postgres.dsn(dbname=settings.airflow.database), connect_timeout=10) as conn:
        row = conn.execute("select slots from slot_pool where pool = %s", [pool]).fetchone()
        return int(row[0]) if row else None


def pool_command() -> list[str]:
    """``airflow pools set`` for the warehouse pool: one slot."""
    description = "Writers of the local DuckDB warehouse (dbt build, history load): one at a time"
    return [str(AIRFLOW_BIN), "pools", "set", AIRFLOW_POOL, "1", description]


def _ensure_pool(settings: Settings) -> None:
    """The warehouse pool with one slot, set through Airflow's own CLI when it is missing or differs."""
    if _pool_slots(settings, AIRFLOW_POOL) == 1:
        return
    result = subprocess.run(
        pool_command(),
        env=process_environment(settings),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise AirflowSetupError(f"`airflow pools set {AIRFLOW_POOL} 1` failed:\n{tail}")
    log.info("Airflow pool %s: 1 slot", AIRFLOW_POOL)
