"""Settings for a second local stack beside the default one: its own state and ports, shared downloads.

Used by the lifecycle tests and the start-up benchmark, which must not disturb a stack that is in use.
"""

from __future__ import annotations

from pathlib import Path

from omnistream.settings import Settings, settings_environment
from omnistream.stack.layout import Layout


def second_stack_settings(base: Settings, state_dir: Path, port_offset: int) -> Settings:
    """``base`` with every server port moved by ``port_offset`` and state kept in ``state_dir``."""

    def shifted(section: str, *fields: str) -> dict[str, int]:
        return {f: getattr(getattr(base, section), f) + port_offset for f in fields}

    return Settings.model_validate(
        {
            "stack": {"state_dir": state_dir, "dist_dir": Layout.from_settings(base).dist},
            "postgres": shifted("postgres", "port"),
            "kafka": shifted("kafka", "port", "controller_port"),
            "registry": shifted("registry", "port", "management_port"),
            "connect": {**shifted("connect", "port"), "group_id": f"omnistream-connect-{port_offset}"},
            "mail": shifted("mail", "smtp_port", "imap_port", "api_port"),
            "gcs": shifted("gcs", "port"),
            "api": shifted("api", "port"),
            "airflow": shifted("airflow", "port"),
            "metrics": shifted("metrics", "sink_port", "email_producer_port", "masterdata_producer_port"),
        }
    )


def as_environment(settings: Settings) -> dict[str, str]:
    """``OMNISTREAM_*`` variables that make a subprocess (an ``omnistream`` command) use ``settings``."""
    return settings_environment(settings)
