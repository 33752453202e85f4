"""The one list of long-running services: what ``omnistream up`` supervises and docker-compose.yml runs.

Each name is also the compose service's name and the supervisord program's name, so a reader (and the
parity test in tests/unit/test_compose.py) can put the two side by side. Kinds:

- ``server``: a real server of the stack (``omnistream stack up`` starts these alone);
- ``source``: a simulator standing in for a real source; ``omnistream up --sources none`` leaves them out;
- ``pipeline``: the producers, the landing sink and the watchdog that restarts failed Connect tasks;
- ``scheduler``: Airflow, which runs dbt and the history load on their schedules.

Services that exist on one side only are named below with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["server", "source", "pipeline", "scheduler"]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    kind: Kind
    needs: tuple[str, ...] = ()  # services that must be up (answering) before this one starts
    what: str = ""


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("postgres", "server", what="PostgreSQL, wal_level=logical (the shop and Airflow's metadata)"),
    ServiceSpec("kafka", "server", what="Apache Kafka broker and KRaft controller"),
    ServiceSpec("greenmail", "server", what="GreenMail SMTP + IMAP (the stores' mailbox)"),
    ServiceSpec("gcs", "server", what="GCS emulator (the history bucket)"),
    ServiceSpec("registry", "server", ("kafka",), "Apicurio schema registry (Confluent API)"),
    ServiceSpec("connect", "server", ("kafka", "postgres"), "Kafka Connect with Debezium"),
    ServiceSpec("api", "source", what="master-data REST API simulator"),
    ServiceSpec("orders-simulator", "source", ("postgres",), "online orders into PostgreSQL"),
    ServiceSpec("emails-simulator", "source", ("greenmail",), "store order-confirmation emails over SMTP"),
    ServiceSpec(
        "email-producer", "pipeline", ("greenmail", "kafka", "registry"), "IMAP → Kafka, exactly once"
    ),
    ServiceSpec("masterdata-producer", "pipeline", ("kafka", "registry"), "REST API → compacted topics"),
    ServiceSpec("sink", "pipeline", ("kafka", "registry"), "Kafka → landing Parquet, exactly once"),
    ServiceSpec("watchdog", "pipeline", ("connect",), "restarts FAILED Connect tasks (and FATAL programs)"),
    # The API server first and so stopped last: running tasks report their result through it.
    ServiceSpec("airflow-api-server", "scheduler", ("postgres",), "Airflow API server and UI"),
    ServiceSpec("airflow-scheduler", "scheduler", ("postgres",), "Airflow scheduler (LocalExecutor)"),
    ServiceSpec("airflow-dag-processor", "scheduler", ("postgres",), "Airflow DAG processor"),
)

# In docker-compose.yml only: the one-shot set-up (``omnistream up`` does it inline), the one-shot
# history upload, the Snowflake connector's apply step (profile snowflake), and Kafka UI, which no
# registry reachable from the local stack serves.
COMPOSE_ONLY = ("init", "history", "snowflake-sink", "kafka-ui")
# In the local stack only: supervisord's event listener, which counts restarts (compose has Docker's).
LOCAL_ONLY = ("events",)

SERVER_NAMES = tuple(s.name for s in SERVICES if s.kind == "server")
BY_NAME = {s.name: s for s in SERVICES}


def services(kinds: tuple[Kind, ...]) -> tuple[ServiceSpec, ...]:
    return tuple(s for s in SERVICES if s.kind in kinds)
