"""Fetch the servers the local stack runs: jars from Maven Central, PostgreSQL from Debian's packages.

Each part is fetched once into ``<state dir>/dist`` and marked complete with the versions it was fetched
for, so a second ``install`` (or ``stack up``) does nothing unless a pin in ``.env`` changed.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from omnistream.errors import OmnistreamError
from omnistream.stack.versions import STACK_DIR, version

log = logging.getLogger(__name__)

POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class InstallError(OmnistreamError):
    """A server could not be installed; the message says what to do."""


@dataclass(frozen=True)
class MavenPart:
    """One Maven build under ``stack/maven`` that fills folders under ``dist``."""

    name: str
    goal: str
    pins: tuple[str, ...]  # the .env pins (without _VERSION) this part is fetched for
    clean: str = ""  # a folder under dist to empty first, so no stale jar stays on a classpath

    def properties(self, dist: Path) -> dict[str, str]:
        props = {f"{pin.lower().replace('_', '.')}.version": version(pin) for pin in self.pins}
        props["dist.dir"] = str(dist)
        if self.clean:
            props["outputDirectory"] = str(dist / self.clean)
        return props


MAVEN_PARTS = (
    MavenPart("kafka", "dependency:copy-dependencies", ("KAFKA", "SCALA", "LOG4J"), clean="kafka/libs"),
    MavenPart("connect-plugins", "package", ("DEBEZIUM", "SNOWFLAKE_CONNECTOR")),
    MavenPart("servers", "package", ("APICURIO", "GREENMAIL")),
    MavenPart(
        "apicurio-converter",
        "dependency:copy-dependencies",
        ("APICURIO_CONVERTER",),
        clean="connect-plugins/apicurio-converter",
    ),
)


def install_maven_part(dist: Path, part: MavenPart) -> bool:
    """Fetch one part unless already complete for the pinned versions; True when something was fetched."""
    marker = dist / f".{part.name}.complete"
    props = part.properties(dist)
    fingerprint = "\n".join(f"{k}={v}" for k, v in sorted(props.items()) if k.endswith(".version"))
    if marker.exists() and marker.read_text() == fingerprint:
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InstallError("Maven (mvn) is not on PATH; install it (Debian: apt-get install maven).")
    if part.clean:
        shutil.rmtree(dist / part.clean, ignore_errors=True)
    cmd = [mvn, "-B", "-q", "-f", str(STACK_DIR / "maven" / part.name / "pom.xml"), part.goal]
    cmd += [f"-D{k}={v}" for k, v in props.items()]
    cmd += ["-DincludeScope=runtime", f"-DmarkersDirectory={dist / '.markers'}"]
    log.info("fetching %s from Maven Central", part.name)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise InstallError(f"Maven could not fetch {part.name}:\n{tail}")
    marker.write_text(fingerprint)
    return True


def install_jars(dist: Path) -> list[str]:
    """Fetch every Maven part; returns the names of the parts that were fetched now."""
    dist.mkdir(parents=True, exist_ok=True)
    return [part.name for part in MAVEN_PARTS if install_maven_part(dist, part)]


def postgres_bin_dir() -> Path:
    """The newest PostgreSQL server binaries on this machine, installing Debian's package if missing."""
    candidates = sorted(glob.glob(POSTGRES_BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    if not candidates:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise InstallError(
                "PostgreSQL server binaries not found under /usr/lib/postgresql; "
                "install Debian's 'postgresql' package (apt-get install postgresql)."
            )
        log.info("installing PostgreSQL from Debian's packages")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postgresql"], check=True, env=env, capture_output=True
        )
        candidates = sorted(glob.glob(POSTGRES_BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    return Path(candidates[-1])


def java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match:
        raise InstallError(f"cannot read the version of {java}: {out.strip()}")
    return int(match.group(1))


def find_java(min_major: int, preferred_home: str = "") -> str:
    """A ``java`` executable of at least ``min_major``: the configured home, PATH, then /usr/lib/jvm."""
    candidates = []
    if preferred_home:
        candidates.append(str(Path(preferred_home) / "bin" / "java"))
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if path_java := shutil.which("java"):
        candidates.append(path_java)
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"))
    for java in candidates:
        if Path(java).exists() and java_major(java) >= min_major:
            return java
    raise InstallError(
        f"no Java {min_major}+ found (looked at {', '.join(candidates) or 'nothing'}); "
        f"install one and set OMNISTREAM_STACK__REGISTRY_JAVA_HOME or JAVA_HOME to it."
    )
