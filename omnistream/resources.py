"""The data files the package ships: the Avro schemas and the connector configs.

They live in the repository's top-level ``schemas/`` and ``connect/`` folders (where the design puts them);
``omnistream/schemas`` and ``omnistream/connector_configs`` are links to those folders, so the files are
inside the package for setuptools' ``package-data`` and for :mod:`importlib.resources`. That way a source
checkout, an editable install and an installed wheel all find them at the same place, relative to the
``omnistream`` package that is imported, with no guess at where the repository is.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _packaged(folder: str) -> Path:
    # A directory of a regular package on disk (a wheel is installed unzipped), so a plain Path serves.
    return Path(str(resources.files("omnistream").joinpath(folder)))


def schemas_dir() -> Path:
    """The Avro schemas, ``<name>.avsc`` (the repository's ``schemas/``)."""
    return _packaged("schemas")


def connector_configs_dir() -> Path:
    """The Kafka Connect connector configs, ``<name>.json`` (the repository's ``connect/``)."""
    return _packaged("connector_configs")
