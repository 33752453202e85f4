"""Kafka Connect connectors of the pipeline: configs in ``connect/*.json``, a REST client, the CLI.

``omnistream connect apply`` renders each config from the settings (placeholders and secrets, see
:mod:`omnistream.connect.config`), validates it with Connect, PUTs it and waits for RUNNING.
"""
