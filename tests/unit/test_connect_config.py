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
    UnresolvedReferences,
    escape_property,
    included_schemas,
    load_dir,
    load_file,
    read_properties,
    read_secrets,
    render,
    resolve,
    secrets_path,
    select,
    unescape_property,
    write_secrets,
)
from omnistream.connect.validation import snowflake_account
from omnistream.settings import ConnectSettings, PostgresSettings, Settings, StackSettings
from omnistream.stack.layout import Layout
from omnistream.stack.services import Connect
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


def test_connect_dir_is_the_packaged_repository_folder() -> None:
    # In a source checkout the package's connector_configs is the repository's connect/ itself.
    assert CONNECT_DIR.resolve() == Path(__file__).resolve().parents[2] / "connect"
    assert (CONNECT_DIR / "onlinedb-postgres.json").exists()


def test_resolve_fills_worker_references_from_the_environment_files_and_settings(tmp_path: Path) -> None:
    settings = settings_at(tmp_path, replication_password=SecretStr(SECRET))
    credentials = tmp_path / "credentials.properties"
    credentials.write_text("# comment\nsnowflake.user = LOADER\n")
    files = [
        connector(),
        ConnectorFile(
            "c",
            {
                "connector.class": "C",
                "a": "${env:A}",
                "b": "x-${env:B}-${file:" + str(credentials) + ":snowflake.user}",
            },
            tmp_path / "c.json",
        ),
    ]
    rendered = render(files, settings)
    shop = resolve(rendered, "onlinedb-postgres", environ={})
    assert shop.config["database.password"] == SECRET  # what apply writes to the secrets file
    assert [(r.field, r.source) for r in shop.references] == [
        (
            "database.password",
            f"setting postgres.replication_password (apply writes it to {rendered.secrets_file})",
        )
    ]
    other = resolve(rendered, "c", environ={"A": "alpha", "B": ""})
    assert other.config == {"name": "c", "connector.class": "C", "a": "alpha", "b": "x--LOADER"}
    assert [r.text for r in other.references] == [
        "${env:A}",
        "${env:B}",
        f"${{file:{credentials}:snowflake.user}}",
    ]
    assert all("alpha" not in r.source and "LOADER" not in r.source for r in other.references)
    assert other.redact("Invalid value alpha for a, LOADER") == "Invalid value [resolved] for a, [resolved]"


def test_resolve_names_every_reference_without_a_value(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.properties"
    credentials.write_text("present=1\n")
    config = {
        "connector.class": "C",
        "url": "${env:SNOWFLAKE_URL}",
        "key": "${file:" + str(credentials) + ":absent}",
        "gone": "${file:" + str(tmp_path / "nope.properties") + ":k}",
    }
    rendered = render([ConnectorFile("c", config, tmp_path / "c.json")], settings_at(tmp_path))
    with pytest.raises(UnresolvedReferences) as caught:
        resolve(rendered, "c", environ={"OTHER": "secret-value"})
    message = str(caught.value)
    assert message.startswith("c: 3 reference(s) have no value here; nothing was sent to Connect:")
    assert "url: ${env:SNOWFLAKE_URL}: environment variable SNOWFLAKE_URL is not set" in message
    assert f"key: ${{file:{credentials}:absent}}: {credentials} has no key 'absent'" in message
    assert f"cannot read {tmp_path / 'nope.properties'}" in message
    assert "secret-value" not in message


def test_read_properties_reads_what_java_properties_reads(tmp_path: Path) -> None:
    path = tmp_path / "p.properties"
    path.write_text(
        "# comment\n! also a comment\n\n"
        "a=1\n  b : two words \nc three\nd = con\\\n    tinued\n"
        "e\\=x=\\u20ac\nempty=\nkey\\ with\\ blanks=v\n"
    )
    assert read_properties(path) == {
        "a": "1",
        "b": "two words ",
        "c": "three",
        "d": "continued",
        "e=x": "€",
        "empty": "",
        "key with blanks": "v",
    }


def test_validation_parsing_keeps_what_connect_defined_and_the_plugin_version() -> None:
    validation = Validation.from_json(
        {
            "name": "C",
            "error_count": 0,
            "configs": [
                {"definition": {"name": "a"}, "value": {"name": "a", "errors": []}},
                {
                    "definition": {"name": "connector.plugin.version"},
                    "value": {
                        "name": "connector.plugin.version",
                        "value": "3.1.0",
                        "recommended_values": ["2.5.0", "3.1.0"],
                    },
                },
            ],
        }
    )
    assert validation.ok and validation.defined == {"a", "connector.plugin.version"}
    assert (validation.version, validation.versions) == ("3.1.0", ("2.5.0", "3.1.0"))


@pytest.mark.parametrize(
    ("errors", "config", "contacted", "says"),
    [
        ({}, {}, True, "logged in to the account and found the database and the schema"),
        (
            {"snowflake.url.name": ["snowflake.url.name: Cannot connect to Snowflake"]},
            {},
            True,
            "tried to log in",
        ),
        ({"snowflake.database.name": ["x database does not exist"]}, {}, True, "the database does not exist"),
        ({"snowflake.schema.name": ["x schema does not exist"]}, {}, True, "the schema does not exist"),
        ({"snowflake.url.name": ["x is not a valid snowflake url"]}, {}, False, "rejected the URL"),
        (
            {"snowflake.private.key": ["x must be a valid PEM RSA private key"]},
            {},
            False,
            "rejected the private key",
        ),
        ({"buffer.flush.time": ["Invalid value 0"]}, {}, False, "only when every field passes"),
        (
            {},
            {"snowflake.private.key": "${env:KEY}"},
            False,
            "the private key is a config-provider reference",
        ),
        ({"jvm.proxy.host": ["proxy host and port must be provided together"]}, {}, True, "logged in"),
    ],
)
def test_snowflake_account_follows_the_connectors_validate(
    errors: dict[str, list[str]], config: dict[str, str], contacted: bool, says: str
) -> None:
    validation = Validation("com.snowflake.kafka.connector.SnowflakeSinkConnector", len(errors), errors)
    assert snowflake_account(config, validation)[0] is contacted
    assert says in snowflake_account(config, validation)[1]


def test_extra_plugin_path_entries_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    c = ConnectSettings(extra_plugin_path=" plugins , /opt/x.jar,, ", exclude_bundled_plugins="a, b")
    assert c.extra_plugin_path == f"{tmp_path / 'plugins'},/opt/x.jar"
    assert c.extra_plugin_dirs == [tmp_path / "plugins", Path("/opt/x.jar")]
    assert c.excluded_plugins == ["a", "b"]


def plugin_stack(tmp_path: Path, **connect: str) -> Connect:
    dist = tmp_path / "dist"
    for name in ("apicurio-converter", "debezium-connector-postgres", "snowflake-kafka-connector"):
        (dist / "connect-plugins" / name).mkdir(parents=True, exist_ok=True)
    settings = Settings(
        stack=StackSettings(state_dir=tmp_path / "state", dist_dir=dist), connect=ConnectSettings(**connect)
    )
    return Connect(settings, Layout.from_settings(settings))


def test_plugin_path_is_the_bundled_folder_then_the_extra_entries(tmp_path: Path) -> None:
    extra = tmp_path / "mine"
    extra.mkdir()
    connect = plugin_stack(tmp_path, extra_plugin_path=str(extra))
    assert connect.plugin_path() == [tmp_path / "dist" / "connect-plugins", extra]


def test_excluded_bundled_plugins_are_left_out_through_links(tmp_path: Path) -> None:
    connect = plugin_stack(tmp_path, exclude_bundled_plugins="snowflake-kafka-connector")
    (chosen,) = connect.plugin_path()
    assert chosen == connect.data_dir / "plugins"
    assert sorted(p.name for p in chosen.iterdir()) == ["apicurio-converter", "debezium-connector-postgres"]
    assert (
        chosen / "apicurio-converter"
    ).resolve() == tmp_path / "dist" / "connect-plugins" / "apicurio-converter"
    # Rebuilt on every start: a plugin no longer excluded comes back.
    connect = plugin_stack(tmp_path, exclude_bundled_plugins="apicurio-converter")
    assert sorted(p.name for p in connect.plugin_path()[0].iterdir()) == [
        "debezium-connector-postgres",
        "snowflake-kafka-connector",
    ]


@pytest.mark.parametrize(
    ("connect", "message"),
    [
        ({"exclude_bundled_plugins": "snowflake"}, "names snowflake, not a folder under"),
        ({"extra_plugin_path": "/nonexistent/plugins"}, "/nonexistent/plugins does not exist"),
    ],
)
def test_plugin_path_mistakes_are_named(tmp_path: Path, connect: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plugin_stack(tmp_path, **connect).plugin_path()
