"""A Snowflake connection from the same ``OMNISTREAM_SNOWFLAKE__*`` variables the dbt profile reads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def connect_params(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Arguments for ``snowflake.connector.connect``; host/port/protocol only when set (a stand-in)."""
    env = os.environ if env is None else env

    def get(key: str, default: str = "") -> str:
        return env.get(f"OMNISTREAM_SNOWFLAKE__{key}", default)

    params: dict[str, Any] = {
        "account": get("ACCOUNT"),
        "user": get("USER"),
        "password": get("PASSWORD"),
        "role": get("ROLE", "TRANSFORMER"),
        "warehouse": get("WAREHOUSE", "TRANSFORMING"),
        "database": get("DATABASE", "OMNISTREAM"),
    }
    if not params["account"]:
        raise ValueError("OMNISTREAM_SNOWFLAKE__ACCOUNT is not set: say which Snowflake account to load into")
    if get("HOST"):
        params.update(host=get("HOST"), port=int(get("PORT", "443")), protocol=get("PROTOCOL", "https"))
    return params


def connect(env: Mapping[str, str] | None = None) -> Any:
    """Open a connection (the connector is imported here: callers that never need it don't pay)."""
    import snowflake.connector

    return snowflake.connector.connect(**connect_params(env))
