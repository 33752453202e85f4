#!/usr/bin/env bash
# make compose-smoke: the full stack under docker compose, end to end, for a user who has Docker.
#
# It needs a running Docker engine and Docker Compose v2.17 or newer (`up --wait-timeout`). It cannot run on
# a machine without a Docker engine, such as the project's development machines, which have only the client;
# CI never calls it. What CI checks of docker-compose.yml is tests/unit/test_compose.py (`docker-compose
# config`, the healthcheck tools, the pins, the ports).
#
# It runs in a compose project of its own (omnistream-smoke): a stack you run yourself keeps its containers
# and volumes. It publishes the same host ports, though: stop that stack first, or move its ports
# (COMPOSE_*_PORT, README "Full stack").
#   1. docker compose up -d --build --wait: every service running or healthy, `init` and `history` done;
#   2. waits, bounded and with progress, until the landing sink has files for every streaming topic;
#   3. drains as `omnistream down --drain` does: the simulators stop, each producer runs once more in its
#      bounded form, Debezium confirms the WAL end, the sink lands what is left, Airflow stops;
#   4. `omnistream dbt build`, then `omnistream reconcile` (marts vs. ground truth, to the cent; its exit
#      code is this script's), both in the application image;
#   5. docker compose down -v, on success and on failure alike (trap).
# Secrets that the environment does not set are drawn for this run only.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
project=omnistream-smoke
up_timeout_s="${SMOKE_UP_TIMEOUT_S:-900}"
land_timeout_s="${SMOKE_LAND_TIMEOUT_S:-600}"
cdc_timeout_s="${SMOKE_CDC_TIMEOUT_S:-180}"
# The topics the long-running sources feed; each must have a landed file before the drain.
topics=(
  onlinedb.shop.orders onlinedb.shop.order_items stores.order_confirmations
  masterdata.customers masterdata.products masterdata.stores
)
# The application image's state directory is /data (Dockerfile); the sink lands under <state dir>/landing.
landed_py='
import pathlib, sys
missing = [t for t in sys.argv[1:] if not any(pathlib.Path("/data/landing", t).rglob("*.parquet"))]
print(" ".join(missing))
sys.exit(1 if missing else 0)
'

step() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }
compose() { docker compose --project-name "$project" --file "$root/docker-compose.yml" "$@"; }
app() { compose run --rm --no-deps airflow-scheduler "$@"; }  # an omnistream command in the app image
sql() { compose exec -T postgres psql -U postgres -d shop -Atc "$1"; }

if ! docker info >/dev/null 2>&1; then
  echo "compose-smoke: no Docker engine answers (\`docker info\` failed); this check needs one" >&2
  exit 2
fi
if ! docker compose version >/dev/null 2>&1; then
  echo "compose-smoke: needs Docker Compose v2 (\`docker compose\`), v2.17 or newer" >&2
  exit 2
fi

export COMPOSE_PROFILES=local-sink
for name in POSTGRES_PASSWORD SHOP_APP_PASSWORD DEBEZIUM_PASSWORD MAILBOX_PASSWORD API_TOKEN; do
  if [ -z "${!name:-}" ]; then
    export "$name=$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')"
  fi
done

cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    echo "compose-smoke: FAILED (exit $rc); the services and their last log lines:" >&2
    compose ps --all >&2 || true
    compose logs --no-color --tail 30 >&2 || true
  fi
  step "docker compose down -v"
  compose down -v --remove-orphans || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "docker compose up -d --build --wait (waits up to ${up_timeout_s}s)"
compose up -d --build --wait --wait-timeout "$up_timeout_s"

step "waiting for records to land (up to ${land_timeout_s}s)"
deadline=$((SECONDS + land_timeout_s))
until missing="$(compose exec -T sink python -c "$landed_py" "${topics[@]}")"; do
  if ((SECONDS >= deadline)); then
    echo "compose-smoke: nothing landed within ${land_timeout_s}s for: ${missing:-(the sink did not answer)}" >&2
    exit 1
  fi
  echo "  still waiting for: ${missing:-(the sink did not answer)}"
  sleep 10
done
echo "  every topic has landed files"

step "drain: the simulators stop; each producer produces what is left"
compose stop orders-simulator emails-simulator
compose stop email-producer
compose run --rm --no-deps email-producer produce emails --once
compose stop masterdata-producer
compose run --rm --no-deps masterdata-producer produce masterdata --once
compose stop api

step "drain: waiting until Debezium confirmed every committed change (up to ${cdc_timeout_s}s)"
target="$(sql "select pg_current_wal_lsn()")"
deadline=$((SECONDS + cdc_timeout_s))
until [ "$(sql "select coalesce(bool_and(confirmed_flush_lsn >= '$target'), false) from pg_replication_slots
                where database = 'shop' and slot_type = 'logical'")" = t ]; do
  if ((SECONDS >= deadline)); then
    echo "compose-smoke: Debezium did not confirm WAL $target within ${cdc_timeout_s}s" >&2
    exit 1
  fi
  sleep 2
done

step "drain: the landing sink lands what is left"
compose stop sink
compose run --rm --no-deps sink sink --drain --instance-id supervised-sink

# The scheduler first (it lets a running dbt build finish), the API server it reports to last.
step "drain: Airflow stops"
compose stop --timeout 120 airflow-scheduler airflow-dag-processor
compose stop airflow-api-server

step "dbt build in the application image"
app dbt build

step "reconcile: the marts against the simulators' ground truth"
app reconcile
step "compose-smoke: ok"
