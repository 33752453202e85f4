"""A Snowflake connection from the settings' ``snowflake`` section, the account the dbt profile builds in."""

from __future__ import annotations

from typing import Any

from omnistream.errors import UsageError
from omnistream.settings import SnowflakeSettings, get_settings


def connect_params(snowflake: SnowflakeSettings) -> dict[str, Any]:
    """Arguments for ``snowflake.connector.connect``; host/port/protocol only when set (a stand-in)."""
    if not snowflake.account:
        raise UsageError(
            "snowflake.account is not set: set OMNISTREAM_SNOWFLAKE__ACCOUNT to the Snowflake account to use"
        )
    params: dict[str, Any] = {
        "account": snowflake.account,
        "user": snowflake.user,
        "password": snowflake.password.get_secret_value(),
        "role": snowflake.role,
        "warehouse": snowflake.warehouse,
        "database": snowflake.database,
    }
    if snowflake.host:
        params.update(host=snowflake.host, port=snowflake.port, protocol=snowflake.protocol)
    return params


def connect(account: SnowflakeSettings | None = None) -> Any:
    """Open a connection to ``account`` (default: the configured one); the connector is imported here, so
    callers that never need it don't pay."""
    import snowflake.connector

    return snowflake.connector.connect(**connect_params(account or get_settings().snowflake))
