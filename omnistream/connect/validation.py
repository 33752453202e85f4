"""``omnistream connect validate``: a connector config resolved as the worker would run it, checked by
Connect, and a plain account of what that check covered.

Connect's ``PUT /connector-plugins/{class}/config/validate`` runs the validator of every field that Connect
or the plugin defines, then the plugin's own ``validate``. A field of the config that nothing defines is
not in the answer: nothing checked it (a misspelt option goes unnoticed). What the plugin's ``validate``
does beyond the fields differs from plugin to plugin. Debezium's PostgreSQL connector logs in to the
database. For the Snowflake sink, this module reads the answer against the connector's source.

The Snowflake connector's ``SnowflakeSinkConnector.validate`` (2.5.0; 3.5.4 is the same, and 4.0.0's
``SnowflakeStreamingSinkConnector`` differs only in step 3, which ignores the authenticator) works in this
order:

1. Each field's own validator. If any field fails, or the URL, user, database or schema is missing, it
   returns at once: the account is not contacted.
2. It checks that the proxy settings come in pairs (an error there does not stop it).
3. If the authenticator is ``snowflake_jwt`` (the default) and the private key or its passphrase still
   holds a config-provider reference (``${…:``), it returns: the account is not contacted. Connect
   resolves references before it validates, so this happens only when the worker cannot resolve one;
   :func:`omnistream.connect.config.resolve` sends none.
4. It parses the URL (``… is not a valid snowflake url``) and the key (``… must be a valid PEM RSA private
   key``, ``… is not valid``) and opens a JDBC connection, which logs in to the account. A failed login
   marks the URL, the user and the key ``Cannot connect to Snowflake``, whatever the cause: a host that
   does not answer, an unknown user or a key that is not the user's.
5. After a login it checks that the database exists, then the schema.

The cross-field rules (ingestion method with schematization, streaming buffers and client lag, Iceberg,
the connector name as a Snowflake identifier) are in ``DefaultConnectorConfigValidator``, which runs in
``start()``, not in ``validate``: they are checked only when the connector starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from omnistream.connect.client import ConnectClient, Validation, ValidationTimedOut
from omnistream.connect.config import Reference, Resolved

SNOWFLAKE_SINK = "com.snowflake.kafka.connector.SnowflakeSinkConnector"
# The error suffixes SnowflakeSinkConnector.validate writes once it is past the fields' own validators.
SNOWFLAKE_LOGIN_FAILED = "Cannot connect to Snowflake"
SNOWFLAKE_BAD_URL = "is not a valid snowflake url"
SNOWFLAKE_NO_DATABASE = "database does not exist"
SNOWFLAKE_NO_SCHEMA = "schema does not exist"
SNOWFLAKE_KEY_FIELDS = ("snowflake.private.key", "snowflake.private.key.passphrase")
SNOWFLAKE_PROXY_FIELDS = frozenset(
    {"jvm.proxy.host", "jvm.proxy.port", "jvm.proxy.username", "jvm.proxy.password"}
)
PROVIDER_PREFIX = re.compile(r"[$][{][a-zA-Z]+:")  # the connector's own test for a reference


@dataclass(frozen=True)
class Report:
    """What Connect said about one resolved config, and what that covered."""

    name: str
    plugin: str
    submitted: tuple[str, ...]  # the fields sent
    validation: Validation
    references: tuple[Reference, ...]  # the worker references resolved before sending
    account: str = ""  # Snowflake sink: whether the connector reached the account, and what it found
    contacted: bool | None = None  # Snowflake sink: True if it logged in or tried to; None otherwise
    at_start_only: str = ""  # what the plugin checks only when the connector starts

    @property
    def ok(self) -> bool:
        return self.validation.ok

    @property
    def checked(self) -> list[str]:
        """The fields sent that Connect or the plugin defines, so their validators ran."""
        return sorted(f for f in self.submitted if f in self.validation.defined)

    @property
    def unchecked(self) -> list[str]:
        """The fields sent that nothing defines: passed on, never checked."""
        return sorted(f for f in self.submitted if f not in self.validation.defined)


def validate(client: ConnectClient, resolved: Resolved) -> Report:
    """Ask Connect to validate ``resolved`` and read its answer."""
    plugin = resolved.config.get("connector.class", "")
    try:
        validation = client.validate(resolved.config)
    except ValidationTimedOut as exc:
        if plugin != SNOWFLAKE_SINK:
            raise
        raise ValidationTimedOut(
            f"{exc}. The Snowflake connector was most likely still trying to log in: its JDBC driver retries "
            "an account that does not answer. Connect reported no field; check the URL and the network"
        ) from exc
    report = Report(resolved.name, plugin, tuple(resolved.config), validation, resolved.references)
    if plugin != SNOWFLAKE_SINK:
        return report
    contacted, account = snowflake_account(resolved.config, validation)
    return dataclasses.replace(
        report,
        contacted=contacted,
        account=account,
        at_start_only=(
            "the cross-field rules (ingestion method with schematization, streaming buffers and client lag, "
            "Iceberg, the connector name): the Snowflake connector checks them only when it starts"
        ),
    )


def snowflake_account(config: dict[str, str], validation: Validation) -> tuple[bool, str]:
    """(whether the connector logged in or tried to, what happened), following SnowflakeSinkConnector.validate
    step by step (see the module docstring)."""
    messages = {f: " ".join(errors) for f, errors in validation.errors.items()}

    def any_error(text: str) -> bool:
        return any(text in m for m in messages.values())

    if any_error(SNOWFLAKE_LOGIN_FAILED):
        return True, (
            "the connector tried to log in to the account and could not (it reports a host that does not "
            "answer, an unknown user and a wrong key alike as 'Cannot connect to Snowflake')"
        )
    if any_error(SNOWFLAKE_NO_DATABASE):
        return True, "the connector logged in to the account; the database does not exist"
    if any_error(SNOWFLAKE_NO_SCHEMA):
        return (
            True,
            "the connector logged in to the account and found the database; the schema does not exist",
        )
    if any_error(SNOWFLAKE_BAD_URL):
        return False, "the account was not contacted: the connector rejected the URL before connecting"
    if any(f in SNOWFLAKE_KEY_FIELDS for f in messages):
        return (
            False,
            "the account was not contacted: the connector rejected the private key before connecting",
        )
    if set(messages) - SNOWFLAKE_PROXY_FIELDS:
        return False, (
            "the account was not contacted: the connector tries it only when every field passes its own check"
        )
    authenticator = config.get("snowflake.authenticator", "snowflake_jwt")
    if authenticator == "snowflake_jwt" and any(
        PROVIDER_PREFIX.search(config.get(f, "")) for f in SNOWFLAKE_KEY_FIELDS
    ):
        return False, "the account was not contacted: the private key is a config-provider reference"
    return True, "the connector logged in to the account and found the database and the schema"
