#!/usr/bin/env bash
# Installs the machine packages the local stack runs on, when missing: a JDK (Kafka, Connect, GreenMail),
# Maven (fetches the servers from Maven Central), the PostgreSQL server, and chromium for the Airflow UI
# test. Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v runuser >/dev/null || missing+=(util-linux)
# A compose implementation, to check docker-compose.yml where no Docker engine runs (tests only).
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
# A headless browser: the Airflow UI test (tests/integration/test_airflow.py) renders the UI and takes its
# screenshot with Debian's chromium.
command -v chromium >/dev/null || missing+=(chromium)

if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian's packages"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q "${missing[@]}"
fi

# Apicurio Registry 3.x needs Java 21 or newer; Kafka runs on 17. Say so early rather than at start-up.
have21=""
for java in "${OMNISTREAM_STACK__REGISTRY_JAVA_HOME:-/nonexistent}/bin/java" "$(command -v java)" /usr/lib/jvm/*/bin/java; do
  [ -x "$java" ] || continue
  major=$("$java" -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -1)
  if [ "${major:-0}" -ge 21 ]; then have21=$java; break; fi
done
if [ -z "$have21" ]; then
  echo "warning: no Java 21+ found; the schema registry (Apicurio 3.x) needs one." >&2
  echo "         install e.g. openjdk-21-jdk-headless (Debian 13) or a Temurin 21+ JDK and set" >&2
  echo "         OMNISTREAM_STACK__REGISTRY_JAVA_HOME to it." >&2
fi
