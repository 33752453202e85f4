"""Where the local stack keeps things under its state directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omnistream.settings import Settings


@dataclass(frozen=True)
class Layout:
    """``dist`` (downloads, kept by ``down --purge``), ``data``, ``logs`` and ``run`` (pid files)."""

    root: Path
    dist: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        root = settings.stack.state_dir.resolve()
        dist = settings.stack.dist_dir.resolve() if settings.stack.dist_dir else root / "dist"
        return cls(root, dist)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def data_dir(self, service: str) -> Path:
        return self.data / service

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.run / f"{service}.pid"
