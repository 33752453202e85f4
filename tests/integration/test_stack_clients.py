"""A real client round trip against each server of the local stack."""

from __future__ import annotations

import smtplib
import time
import uuid
from decimal import Decimal
from email.message import EmailMessage

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from imapclient import IMAPClient

from omnistream.settings import Settings

pytestmark = pytest.mark.integration

ORDER_V1 = """{"type": "record", "name": "Probe", "namespace": "omnistream.test",
 "fields": [{"name": "id", "type": "long"},
            {"name": "amount",
             "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}}]}"""
# A new field without a default: readers on the new schema cannot read old records -> not BACKWARD.
ORDER_V2_INCOMPATIBLE = ORDER_V1.replace('"fields": [', '"fields": [{"name": "store", "type": "string"}, ')
ORDER_V2_COMPATIBLE = ORDER_V1.replace(
    '"fields": [', '"fields": [{"name": "store", "type": ["null", "string"], "default": null}, '
)


def test_postgres_roles_write_read_and_replicate(stack_settings: Settings, unique: str) -> None:
    pg = stack_settings.postgres
    with psycopg.connect(pg.app_dsn(), autocommit=True) as app:
        app.execute(f"create table shop.probe_{unique} (id int primary key, amount numeric(12,2) not null)")
        app.execute(f"insert into shop.probe_{unique} values (1, 19.99), (2, 0.01)")
        total = app.execute(f"select sum(amount) from shop.probe_{unique}").fetchone()
        assert total == (Decimal("20.00"),)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(f"select pg_create_logical_replication_slot('app_{unique}', 'pgoutput')")
        app.execute(f"drop table shop.probe_{unique}")

    with psycopg.connect(pg.replication_dsn(), autocommit=True) as dbz:
        wal_level = dbz.execute("show wal_level").fetchone()
        assert wal_level == ("logical",)
        slot = f"probe_{unique}"
        row = dbz.execute("select slot_name from pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
        assert row.fetchone() == (slot,)
        dbz.execute("select pg_drop_replication_slot(%s)", [slot])
        published = dbz.execute(
            "select count(*) from pg_publication where pubname = %s", [pg.publication]
        ).fetchone()
        assert published == (1,)


def _create_topic(settings: Settings, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)


def _consume(settings: Settings, topic: str, count: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + 60
    try:
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            messages.append(msg)
    finally:
        consumer.close()
    return messages


def test_kafka_idempotent_producer_and_consumer_round_trip(stack_settings: Settings, unique: str) -> None:
    topic = f"probe.kafka.{unique}"
    _create_topic(stack_settings, topic)
    delivered: list[str] = []

    def on_delivery(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None, err
        delivered.append(msg.value().decode())

    producer = Producer(
        {"bootstrap.servers": stack_settings.kafka.bootstrap_servers, "enable.idempotence": True}
    )
    sent = [f"order-{i}" for i in range(50)]
    for value in sent:
        producer.produce(topic, key=value.encode(), value=value.encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert delivered == sent
    assert [m.value().decode() for m in _consume(stack_settings, topic, len(sent))] == sent


def test_registry_serves_avro_and_enforces_backward_compatibility(
    stack_settings: Settings, unique: str
) -> None:
    client = SchemaRegistryClient({"url": stack_settings.registry.url})
    subject = f"probe.registry.{unique}-value"
    schema_id = client.register_schema(subject, Schema(ORDER_V1, "AVRO"))
    latest = client.get_latest_version(subject)
    assert latest.schema_id == schema_id
    assert '"Probe"' in latest.schema.schema_str

    with pytest.raises(SchemaRegistryError) as rejected:
        client.register_schema(subject, Schema(ORDER_V2_INCOMPATIBLE, "AVRO"))
    assert rejected.value.http_status_code == 409
    assert "compatib" in str(rejected.value).lower()

    compatible_id = client.register_schema(subject, Schema(ORDER_V2_COMPATIBLE, "AVRO"))
    assert compatible_id != schema_id


def test_avro_serializer_round_trip_through_kafka(stack_settings: Settings, unique: str) -> None:
    topic = f"probe.avro.{unique}"
    _create_topic(stack_settings, topic)
    client = SchemaRegistryClient({"url": stack_settings.registry.url})
    serializer = AvroSerializer(client, ORDER_V1)
    record = {"id": 7, "amount": Decimal("1234.56")}
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": stack_settings.kafka.bootstrap_servers})
    producer.produce(topic, value=serializer(record, ctx))
    assert producer.flush(30) == 0

    [message] = _consume(stack_settings, topic, 1)
    assert message.value()[0] == 0  # Confluent wire format: magic byte, then a 4-byte schema id
    deserializer = AvroDeserializer(client)
    assert deserializer(message.value(), ctx) == record


def test_connect_lists_plugins_and_validates_debezium_against_postgres(stack_settings: Settings) -> None:
    url = stack_settings.connect.url
    classes = {p["class"] for p in httpx.get(f"{url}/connector-plugins", timeout=10).json()}
    assert "io.debezium.connector.postgresql.PostgresConnector" in classes
    assert "com.snowflake.kafka.connector.SnowflakeSinkConnector" in classes

    pg = stack_settings.postgres
    config = {
        "name": "probe-validate",
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": pg.host,
        "database.port": str(pg.port),
        "database.user": pg.replication_user,
        "database.password": pg.replication_password.get_secret_value(),
        "database.dbname": pg.database,
        "topic.prefix": "probe",
        "publication.name": pg.publication,
        "publication.autocreate.mode": "disabled",
    }
    validate = f"{url}/connector-plugins/PostgresConnector/config/validate"
    ok = httpx.put(validate, json=config, timeout=60).json()
    errors = [c["value"] for c in ok["configs"] if (c.get("value") or {}).get("errors")]
    assert ok["error_count"] == 0, errors

    # Validation really reaches the database: a wrong password is reported on the password field.
    bad = httpx.put(validate, json={**config, "database.password": "wrong"}, timeout=60).json()
    assert bad["error_count"] > 0


def test_smtp_message_is_read_back_over_imap(stack_settings: Settings, unique: str) -> None:
    mail = stack_settings.mail
    message = EmailMessage()
    message["From"] = f"s001@{mail.domain}"
    message["To"] = mail.mailbox_address
    message["Subject"] = f"Order confirmation probe-{unique}"
    message["Message-ID"] = f"<{unique}@{mail.domain}>"
    message.set_content("Total: 12,34 €\n")
    with smtplib.SMTP(mail.host, mail.smtp_port, timeout=10) as smtp:
        smtp.send_message(message)

    with IMAPClient(mail.host, port=mail.imap_port, ssl=False, timeout=10) as imap:
        imap.login(mail.mailbox_user, mail.mailbox_password.get_secret_value())
        imap.select_folder("INBOX", readonly=True)
        deadline = time.monotonic() + 30
        uids: list[int] = []
        while not uids and time.monotonic() < deadline:
            uids = imap.search(["SUBJECT", f"probe-{unique}"])
            if not uids:
                time.sleep(0.2)
        assert len(uids) == 1
        body = imap.fetch(uids, ["RFC822"])[uids[0]][b"RFC822"].decode()
    assert f"<{unique}@{mail.domain}>" in body
    assert "12,34 €" in body


def test_gcs_bucket_and_object_round_trip(stack_settings: Settings, unique: str) -> None:
    gcs = stack_settings.gcs
    client = storage.Client(
        project=gcs.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=gcs.endpoint),
    )
    bucket = client.create_bucket(f"probe-{unique}")
    payload = bytes(range(256)) * 4096
    bucket.blob("history/year=2020/part-0.parquet").upload_from_string(payload)
    assert client.bucket(bucket.name).blob("history/year=2020/part-0.parquet").download_as_bytes() == payload
    assert [b.name for b in client.list_blobs(bucket.name, prefix="history/")] == [
        "history/year=2020/part-0.parquet"
    ]
