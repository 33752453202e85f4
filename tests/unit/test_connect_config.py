"""connect/*.json and their rendering, without any server."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from omnistream.connect.client import ConnectorStatus, Validation, trace_summary
from omnistream.connect.config import (
    CONNECT_DIR,
    OPT_IN,
    ConfigFileError,
    ConnectorFile,
    escape_property,
    included_schemas,
    load_dir,
    load_file,
    read_secrets,
    render,
    secrets_path,
    select,
    unescape_property,
    write_secrets,
)
from omnistream.settings import PostgresSettings, Settings, StackSettings
from omnistream.topics import CDC_PREFIX, ORDER_ITEMS, ORDERS, PIPELINE_TOPICS

SECRET = "pa ss=w:o#r!d\\ü€𝄞\n"


def connector(name: str = "onlinedb-postgres") -> ConnectorFile:
    return next(f for f in load_dir() if f.name == name)


def settings_at(tmp_path: Path, **postgres: Any) -> Settings:
    return Settings(stack=StackSettings(state_dir=tmp_path / "state"), postgres=PostgresSettings(**postgres))


def test_every_file_is_one_connector_with_string_values_in_the_house_order() -> None:
    files = load_dir()
    assert {f.name for f in files} == {"onlinedb-postgres", "snowflake-sink"}
    for f in files:
        keys = list(f.config)
        assert keys[:2] == ["connector.class", "tasks.max"], f.name
        converters = [i for i, k in enumerate(keys) if ".converter" in k or k.endswith("converter")]
        transforms = [i for i, k in enumerate(keys) if k.startswith("transforms")]
        if transforms:
            assert transforms == list(range(transforms[0], len(keys))), "transforms come last"
            assert max(converters) < transforms[0]
        # Secrets are references, never text.
        for key, value in f.config.items():
            if any(word in key for word in ("password", "private.key", "user.name", "url.name")):
                assert value.startswith("${"), (f.name, key)


def test_the_shop_connector_produces_the_pipeline_topics_in_the_agreed_shape() -> None:
    config = connector().config
    assert config["topic.prefix"] == CDC_PREFIX
    tables = config["table.include.list"].split(",")
    assert {f"{config['topic.prefix']}.{t}" for t in tables} == {ORDERS, ORDER_ITEMS}
    assert config["plugin.name"] == "pgoutput"
    assert config["publication.name"] == "${omnistream:postgres.publication}"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["decimal.handling.mode"] == "precise"
    assert config["tombstones.on.delete"] == "true"
    assert int(config["heartbeat.interval.ms"]) > 0
    assert config["transforms.unwrap.type"] == "io.debezium.transforms.ExtractNewRecordState"
    assert config["transforms.unwrap.delete.tombstone.handling.mode"] == "rewrite-with-tombstone"
    assert set(config["transforms.unwrap.add.fields"].split(",")) >= {"op", "lsn", "source.ts_ms"}
    for side in ("key", "value"):
        assert config[f"{side}.converter.apicurio.registry.as-confluent"] == "true"
        assert config[f"{side}.converter.apicurio.registry.headers.enabled"] == "false"
        assert config[f"{side}.converter.apicurio.registry.use-id"] == "contentId"


def test_the_snowflake_sink_lands_every_pipeline_topic_in_a_table_named_after_it() -> None:
    config = connector("snowflake-sink").config
    assert config["topics"].split(",") == list(PIPELINE_TOPICS)
    mapping = dict(pair.split(":") for pair in config["snowflake.topic2table.map"].split(","))
    assert mapping == {t: t.replace(".", "_") for t in PIPELINE_TOPICS}
    assert config["snowflake.ingestion.method"] == "SNOWPIPE_STREAMING"
    assert config["snowflake.enable.schematization"] == "true"
    assert config["errors.tolerance"] == "all"
    assert config["errors.deadletterqueue.topic.name"].endswith(".dlq")


def test_render_fills_settings_and_moves_secrets_into_a_private_file(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, host="db.internal", port=6543, replication_password=SecretStr(SECRET))
    rendered = render([connector()], settings)
    config = rendered.configs["onlinedb-postgres"]
    assert config["name"] == "onlinedb-postgres"
    assert (config["database.hostname"], config["database.port"]) == ("db.internal", "6543")
    assert config["value.converter.apicurio.registry.url"] == "http://127.0.0.1:18081/apis/registry/v2"
    path = secrets_path(settings).resolve()
    assert rendered.secrets_file == path
    assert config["database.password"] == f"${{file:{path}:postgres.replication_password}}"
    assert not any(SECRET in v for v in config.values())
    assert "${omnistream" not in json.dumps(config)

    write_secrets(path, rendered.secrets)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secrets(path) == {"postgres.replication_password": SECRET}
    write_secrets(path, {"other.secret": "x"})
    assert read_secrets(path) == {"postgres.replication_password": SECRET, "other.secret": "x"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${omnistream:postgres.replication_password}", "is a secret"),
        ("${omnistream-secret:postgres.host}", "is not a secret"),
        ("${omnistream:postgres.nope}", "no setting 'postgres.nope'"),
        ("${omnistream:postgres}", "not a single value"),
        ("${vault:secret/db:password}", "config provider 'vault'"),
    ],
)
def test_render_refuses_what_would_break_at_runtime(tmp_path: Path, value: str, message: str) -> None:
    bad = ConnectorFile("x", {"connector.class": "C", "some.option": value}, tmp_path / "x.json")
    with pytest.raises(ConfigFileError, match=message):
        render([bad], settings_at(tmp_path))


def test_worker_provider_references_pass_through(tmp_path: Path) -> None:
    sink = render([connector("snowflake-sink")], settings_at(tmp_path))
    assert sink.configs["snowflake-sink"]["snowflake.private.key"] == "${env:SNOWFLAKE_PRIVATE_KEY}"
    assert sink.secrets == {}


def test_opt_in_connectors_are_applied_only_when_asked_for() -> None:
    files = load_dir()
    assert "snowflake-sink" in OPT_IN
    assert [f.name for f in select(files)] == ["onlinedb-postgres"]
    assert [f.name for f in select(files, include=["snowflake-sink"])] == [
        "onlinedb-postgres",
        "snowflake-sink",
    ]
    assert [f.name for f in select(files, only=["snowflake-sink"])] == ["snowflake-sink"]
    with pytest.raises(ConfigFileError, match="no connector config named nope"):
        select(files, include=["nope"])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"name": "c", "config": {"connector.class": "C", "tasks.max": 1}}, "every value must be a string"),
        ({"name": "other", "config": {"connector.class": "C"}}, "must equal the file name"),
        ({"name": "c", "config": {"connector.class": "C"}, "extra": 1}, "expected exactly"),
        ({"name": "c", "config": {"tasks.max": "1"}}, "connector.class is missing"),
    ],
)
def test_malformed_files_are_named(tmp_path: Path, document: dict[str, object], message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigFileError, match=message):
        load_file(path)


def test_properties_escaping() -> None:
    assert escape_property(" a=b:c#d!e\\f\tg") == "\\ a\\=b\\:c\\#d\\!e\\\\f\\tg"
    assert escape_property("a b", key=True) == "a\\ b"
    assert escape_property("€𝄞") == "\\u20ac\\ud834\\udd1e"


@given(st.text())
def test_properties_escaping_round_trips(text: str) -> None:
    escaped = escape_property(text)
    assert escaped.isascii() and "\n" not in escaped
    assert unescape_property(escaped) == text


def test_included_schemas() -> None:
    assert included_schemas({"table.include.list": "shop.orders, shop.order_items,b.t"}) == ["b", "shop"]
    assert included_schemas({}) == []


def test_trace_summary_keeps_the_first_line_and_every_cause() -> None:
    trace = (
        "org.apache.kafka.connect.errors.ConnectException: boom\n"
        "\tat io.debezium.Foo.bar(Foo.java:1)\n"
        "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed\n"
        "\tat org.postgresql.Baz.qux(Baz.java:2)\n"
    )
    assert trace_summary(trace) == (
        "org.apache.kafka.connect.errors.ConnectException: boom\n"
        "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed"
    )
    assert trace_summary("") == "(no trace)"


def test_status_and_validation_parsing() -> None:
    status = ConnectorStatus.from_json(
        {
            "name": "c",
            "connector": {"state": "RUNNING", "worker_id": "w"},
            "tasks": [{"id": 1, "state": "FAILED", "trace": "E: x"}, {"id": 0, "state": "RUNNING"}],
            "type": "source",
        }
    )
    assert [t.id for t in status.tasks] == [0, 1]
    assert status.failed and not status.running
    assert status.describe() == "RUNNING, tasks 0 RUNNING, 1 FAILED"
    assert status.failures() == [("task 1", "E: x")]
    no_tasks = ConnectorStatus.from_json({"name": "c", "connector": {"state": "RUNNING"}, "tasks": []})
    assert not no_tasks.running

    validation = Validation.from_json(
        {
            "name": "C",
            "error_count": 1,
            "configs": [
                {"value": {"name": "a", "errors": []}},
                {"value": {"name": "b", "errors": ["bad"]}},
                {"definition": {"name": "no-value"}},
            ],
        }
    )
    assert not validation.ok and validation.errors == {"b": ["bad"]}


def test_connect_dir_is_the_repository_folder() -> None:
    assert CONNECT_DIR.name == "connect" and (CONNECT_DIR / "onlinedb-postgres.json").exists()
