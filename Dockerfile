# The omnistream application image: CLI, simulators, producers, landing sink, dbt and Airflow (the dev
# extra carries Airflow, fakesnow and the linters).
# The default is .env's PYTHON_VERSION (docker compose passes it); bookworm is the local stack's Debian 12.
ARG PYTHON_VERSION=3.11.16
FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md .env ./
COPY omnistream ./omnistream
COPY simulators ./simulators
COPY producers ./producers
COPY schemas ./schemas
COPY connect ./connect
COPY stack ./stack
COPY dbt ./dbt
COPY airflow ./airflow
# uid 1000 = the Kafka image's user, so Connect can read the 0600 secrets file on the shared volume.
RUN pip install -e '.[dev]' && useradd --create-home --uid 1000 omnistream && mkdir -p /data && chown omnistream /data
USER omnistream
ENV OMNISTREAM_STACK__STATE_DIR=/data
ENTRYPOINT ["omnistream"]
