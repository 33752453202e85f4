"""The servers of the local stack: how each is prepared, started, checked and bootstrapped.

Every service runs the real server: PostgreSQL from the machine's binaries, Apache Kafka (KRaft) and
Kafka Connect from Maven Central jars, Apicurio Registry's distribution, GreenMail standalone and
gcp-storage-emulator. Nothing here imitates a server.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import httpx
import psycopg
from psycopg import sql

from omnistream.settings import Settings
from omnistream.stack.install import find_java, postgres_bin_dir
from omnistream.stack.layout import Layout
from omnistream.stack.versions import STACK_DIR

CONF_DIR = STACK_DIR / "conf"
LOG4J_CONFIG = CONF_DIR / "log4j2.properties"


@dataclass(frozen=True)
class Launch:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None


class Service:
    """One server of the stack. Subclasses fill in the hooks."""

    name: str = ""
    needs: tuple[str, ...] = ()
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, settings: Settings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout

    def ports(self) -> dict[str, tuple[str, int]]:
        """Label → (host, port) of every socket the server listens on."""
        raise NotImplementedError

    def endpoints(self) -> dict[str, str]:
        return {label: f"{host}:{port}" for label, (host, port) in self.ports().items()}

    def prepare(self) -> None:
        """One-time set-up before the first start (create a cluster, format storage, write configs)."""

    def launch(self) -> Launch:
        raise NotImplementedError

    def check(self) -> None:
        """Raise if the server does not yet answer a real client request."""
        raise NotImplementedError

    def bootstrap(self) -> None:
        """Idempotent set-up once the server answers (roles, global rules)."""

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir(self.name)

    def java(self, min_major: int = 17) -> str:
        return find_java(min_major, self.settings.stack.java_home)


def _render(template: Path, target: Path, **values: object) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(Template(template.read_text()).substitute({k: str(v) for k, v in values.items()}))
    return target


class Postgres(Service):
    name = "postgres"
    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: roll back open transactions, then exit

    RUN_AS = "postgres"  # PostgreSQL refuses to run as root

    def ports(self) -> dict[str, tuple[str, int]]:
        pg = self.settings.postgres
        return {"postgres": (pg.host, pg.port)}

    def endpoints(self) -> dict[str, str]:
        pg = self.settings.postgres
        return {"postgres": f"postgresql://{pg.app_user}@{pg.host}:{pg.port}/{pg.database}"}

    @property
    def run_as(self) -> str | None:
        return self.RUN_AS if os.geteuid() == 0 else None

    @property
    def cluster_dir(self) -> Path:
        """The cluster's directory; when running as root it must be reachable by the postgres user."""
        link = self.data_dir
        if link.is_symlink():
            return link.resolve()
        if self.run_as is None or link.exists() or self._reachable_by_run_as(link.parent):
            return link
        # The state directory sits under a folder the postgres user cannot enter (e.g. a 0700 temp dir):
        # keep the cluster in /var/tmp and point a symlink at it, so --purge still finds it.
        digest = hashlib.sha1(str(self.layout.root).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"omnistream-postgres-{digest}"

    def _reachable_by_run_as(self, folder: Path) -> bool:
        folder.mkdir(parents=True, exist_ok=True)
        probe = ["runuser", "-u", self.RUN_AS, "--", "test", "-x", str(folder)]
        return subprocess.run(probe, check=False).returncode == 0

    def prepare(self) -> None:
        cluster = self.cluster_dir
        if (cluster / "PG_VERSION").exists():
            return
        cluster.mkdir(parents=True, exist_ok=True)
        if cluster != self.data_dir and not self.data_dir.is_symlink():
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self.data_dir.symlink_to(cluster)
        if self.run_as:
            shutil.chown(cluster, self.run_as, self.run_as)
        cluster.chmod(0o700)
        initdb = postgres_bin_dir() / "initdb"
        # The superuser's password from the start (generated with the stack's other secrets), so that
        # no connection over TCP is ever trusted without one.
        pwfile = cluster.parent / f".{cluster.name}.pw"
        pwfile.write_text(self.settings.postgres.superuser_password.get_secret_value() + "\n")
        pwfile.chmod(0o600)
        if self.run_as:
            shutil.chown(pwfile, self.run_as, self.run_as)
        cmd = [str(initdb), "-D", str(cluster), "-U", self.settings.postgres.superuser, "-E", "UTF8"]
        cmd += ["--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}{result.stderr}")
        self._write_hba()

    def _write_hba(self) -> bool:
        """Loopback only, and every role (the superuser too) presents its password over TCP. The Unix socket
        lives in the cluster's own 0700 directory, so only its owner (and root) can reach it: trusted."""
        hba = self.cluster_dir / "pg_hba.conf"
        wanted = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
        if hba.read_text() == wanted:
            return False
        hba.write_text(wanted)
        return True

    def launch(self) -> Launch:
        pg = self.settings.postgres
        cluster = self.cluster_dir
        options = {
            "listen_addresses": pg.host,
            "port": pg.port,
            "unix_socket_directories": cluster,
            "wal_level": "logical",
            "max_replication_slots": pg.max_replication_slots,
            "max_wal_senders": pg.max_wal_senders,
            "shared_buffers": "128MB",
            "fsync": "on",
        }
        cmd = [str(postgres_bin_dir() / "postgres"), "-D", str(cluster)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        return Launch(cmd, cwd=cluster, user=self.run_as)

    def _connect(self, dbname: str = "postgres") -> psycopg.Connection:
        pg = self.settings.postgres
        return psycopg.connect(pg.dsn(dbname=dbname), autocommit=True, connect_timeout=2)

    def check(self) -> None:
        with self._connect() as conn:
            conn.execute("select 1")

    def bootstrap(self) -> None:
        pg = self.settings.postgres
        values = {
            "app_user": sql.Identifier(pg.app_user),
            "app_user_literal": sql.Literal(pg.app_user),
            "app_password": sql.Literal(pg.app_password.get_secret_value()),
            "replication_user": sql.Identifier(pg.replication_user),
            "replication_user_literal": sql.Literal(pg.replication_user),
            "replication_password": sql.Literal(pg.replication_password.get_secret_value()),
            "database": sql.Identifier(pg.database),
            "publication": sql.Identifier(pg.publication),
            "publication_literal": sql.Literal(pg.publication),
        }
        with self._connect() as conn:
            if (self.cluster_dir / "PG_VERSION").exists():
                # This stack's own cluster: one made before passwords were required over TCP gets the
                # generated superuser password now, then the strict rules (a server elsewhere: untouched).
                password = sql.Literal(pg.superuser_password.get_secret_value())
                conn.execute(
                    sql.SQL("alter role {} password {}").format(sql.Identifier(pg.superuser), password)
                )
                if self._write_hba():
                    conn.execute("select pg_reload_conf()")
            conn.execute(sql.SQL((CONF_DIR / "postgres-bootstrap.sql").read_text()).format(**values))
            exists = conn.execute("select 1 from pg_database where datname = %s", [pg.database]).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("create database {} owner {}").format(
                        sql.Identifier(pg.database), sql.Identifier(pg.app_user)
                    )
                )
        with self._connect(pg.database) as conn:
            conn.execute(sql.SQL((CONF_DIR / "postgres-shop.sql").read_text()).format(**values))


class Kafka(Service):
    name = "kafka"

    def ports(self) -> dict[str, tuple[str, int]]:
        k = self.settings.kafka
        return {"kafka": (k.host, k.port), "controller": (k.host, k.controller_port)}

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    def prepare(self) -> None:
        k = self.settings.kafka
        logs = self.data_dir / "logs"
        _render(
            CONF_DIR / "kafka-server.properties",
            self.properties_file,
            host=k.host,
            port=k.port,
            controller_port=k.controller_port,
            data_dir=logs,
        )
        if (logs / "meta.properties").exists():
            return
        # KRaft storage is formatted once with a cluster id in Kafka's Uuid form (22 chars, url-safe).
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [*self._java_cmd("kafka.tools.StorageTool"), "format", "-t", cluster_id]
        cmd += ["-c", str(self.properties_file)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def _java_cmd(self, main_class: str, heap: str = "256m") -> list[str]:
        libs = self.layout.dist / "kafka" / "libs"
        return [
            self.java(17),
            f"-Xmx{heap}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            main_class,
        ]

    def launch(self) -> Launch:
        cmd = [*self._java_cmd("kafka.Kafka", self.settings.kafka.heap), str(self.properties_file)]
        return Launch(cmd)

    def check(self) -> None:
        from confluent_kafka.admin import AdminClient

        # librdkafka would print every refused connection while the broker starts; route it to a
        # logger that keeps quiet, since "not yet" is the expected answer here.
        quiet = logging.getLogger("omnistream.stack.kafka_probe")
        quiet.setLevel(logging.CRITICAL)
        config: dict = {"bootstrap.servers": self.settings.kafka.bootstrap_servers, "logger": quiet}
        admin = AdminClient(config)
        metadata = admin.list_topics(timeout=2)
        if not metadata.brokers:
            raise RuntimeError("no broker in the cluster metadata yet")


class Registry(Service):
    """Apicurio Registry 3.x; schemas are stored in a Kafka topic (kafkasql) so they survive restarts."""

    name = "registry"
    needs = ("kafka",)

    def ports(self) -> dict[str, tuple[str, int]]:
        r = self.settings.registry
        return {"registry": (r.host, r.port), "management": (r.host, r.management_port)}

    def endpoints(self) -> dict[str, str]:
        return {"registry": self.settings.registry.url}

    def launch(self) -> Launch:
        r = self.settings.registry
        jar = self.layout.dist / "apicurio-registry" / "quarkus-run.jar"
        java = find_java(21, self.settings.stack.registry_java_home)
        cmd = [java, f"-Xmx{r.heap}", "-jar", str(jar)]
        env = {
            "QUARKUS_HTTP_HOST": r.host,
            "QUARKUS_HTTP_PORT": str(r.port),
            "QUARKUS_MANAGEMENT_HOST": r.host,
            "QUARKUS_MANAGEMENT_PORT": str(r.management_port),
            "APICURIO_STORAGE_KIND": "kafkasql",
            "APICURIO_KAFKASQL_BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "APICURIO_KAFKASQL_TOPIC": "_apicurio-kafkasql-journal",
        }
        return Launch(cmd, env=env, cwd=self.data_dir)

    def check(self) -> None:
        httpx.get(f"{self.settings.registry.url}/subjects", timeout=2).raise_for_status()

    def bootstrap(self) -> None:
        # BACKWARD compatibility for every subject unless a subject overrides it.
        response = httpx.put(
            f"{self.settings.registry.url}/config", json={"compatibility": "BACKWARD"}, timeout=30
        )
        response.raise_for_status()


class Connect(Service):
    name = "connect"
    needs = ("kafka",)

    def ports(self) -> dict[str, tuple[str, int]]:
        c = self.settings.connect
        return {"connect": (c.host, c.port)}

    def endpoints(self) -> dict[str, str]:
        return {"connect": self.settings.connect.url}

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "connect-distributed.properties"

    @property
    def bundled_plugins(self) -> Path:
        """The plugins fetched from Maven Central, one folder each (stack/maven/connect-plugins)."""
        return self.layout.dist / "connect-plugins"

    def plugin_path(self) -> list[Path]:
        """Connect's ``plugin.path``: the bundled plugins, then ``connect.extra_plugin_path``.

        With ``connect.exclude_bundled_plugins``, the bundled folders come through a folder of symlinks
        to all but the excluded ones (Connect follows them), since the downloads are shared by stacks.
        """
        c = self.settings.connect
        bundled = self.bundled_plugins
        present = sorted(p.name for p in bundled.iterdir()) if bundled.is_dir() else []
        unknown = [name for name in c.excluded_plugins if name not in present]
        if unknown:
            raise ValueError(
                f"connect.exclude_bundled_plugins names {', '.join(unknown)}, not a folder under {bundled} "
                f"(there: {', '.join(present) or 'nothing'})"
            )
        missing = [str(p) for p in c.extra_plugin_dirs if not p.exists()]
        if missing:
            raise ValueError(f"connect.extra_plugin_path: {', '.join(missing)} does not exist")
        if c.excluded_plugins:
            chosen = self.data_dir / "plugins"
            chosen.mkdir(parents=True, exist_ok=True)
            for link in chosen.iterdir():  # only links are ever made here
                link.unlink()
            for name in present:
                if name not in c.excluded_plugins:
                    (chosen / name).symlink_to(bundled / name)
            bundled = chosen
        return [bundled, *c.extra_plugin_dirs]

    def prepare(self) -> None:
        c = self.settings.connect
        _render(
            CONF_DIR / "connect-distributed.properties",
            self.properties_file,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=c.group_id,
            host=c.host,
            port=c.port,
            plugin_path=",".join(str(p) for p in self.plugin_path()),
        )

    def launch(self) -> Launch:
        libs = self.layout.dist / "kafka" / "libs"
        cmd = [
            self.java(17),
            f"-Xmx{self.settings.connect.heap}",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(self.properties_file),
        ]
        return Launch(cmd)

    def check(self) -> None:
        httpx.get(f"{self.settings.connect.url}/connector-plugins", timeout=2).raise_for_status()


class Mail(Service):
    """GreenMail: SMTP and IMAP, with the stores' confirmations mailbox. Mail lives in memory."""

    name = "greenmail"

    def ports(self) -> dict[str, tuple[str, int]]:
        m = self.settings.mail
        return {"smtp": (m.host, m.smtp_port), "imap": (m.host, m.imap_port), "api": (m.host, m.api_port)}

    def launch(self) -> Launch:
        m = self.settings.mail
        jar = next((self.layout.dist / "greenmail").glob("greenmail-standalone-*.jar"))
        user = f"{m.mailbox_user}:{m.mailbox_password.get_secret_value()}@{m.domain}"
        props = {
            "greenmail.smtp.hostname": m.host,
            "greenmail.smtp.port": m.smtp_port,
            "greenmail.imap.hostname": m.host,
            "greenmail.imap.port": m.imap_port,
            "greenmail.api.hostname": m.host,
            "greenmail.api.port": m.api_port,
            "greenmail.users": user,
        }
        cmd = [self.java(17), f"-Xmx{m.heap}", *(f"-D{k}={v}" for k, v in props.items()), "-jar", str(jar)]
        return Launch(cmd)

    def check(self) -> None:
        m = self.settings.mail
        with imaplib.IMAP4(m.host, m.imap_port, timeout=2) as imap:
            imap.login(m.mailbox_user, m.mailbox_password.get_secret_value())
            imap.logout()


class Gcs(Service):
    name = "gcs"

    def ports(self) -> dict[str, tuple[str, int]]:
        g = self.settings.gcs
        return {"gcs": (g.host, g.port)}

    def endpoints(self) -> dict[str, str]:
        return {"gcs": self.settings.gcs.endpoint}

    def launch(self) -> Launch:
        g = self.settings.gcs
        emulator = Path(sys.executable).parent / "gcp-storage-emulator"
        cmd = [str(emulator), "start", "--host", g.host, "--port", str(g.port)]
        # The emulator keeps its objects under the working directory, so they survive restarts.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return Launch(cmd, cwd=self.data_dir)

    def check(self) -> None:
        g = self.settings.gcs
        httpx.get(f"{g.endpoint}/storage/v1/b", params={"project": g.project}, timeout=2).raise_for_status()


SERVICE_TYPES: tuple[type[Service], ...] = (Postgres, Kafka, Mail, Gcs, Registry, Connect)
SERVICE_NAMES = tuple(t.name for t in SERVICE_TYPES)


def build_services(settings: Settings, layout: Layout) -> dict[str, Service]:
    return {t.name: t(settings, layout) for t in SERVICE_TYPES}
