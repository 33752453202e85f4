"""Airflow in the local stack: its configuration and preparation (``config``), a REST client (``client``)."""
