"""supervisord's configuration as omnistream renders it, read back by supervisord's own parser."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

from supervisor.options import ServerOptions

from omnistream.settings import Settings
from omnistream.stack.layout import Layout
from omnistream.supervise import config
from omnistream.supervise.catalogue import SERVICES
from omnistream.supervise.events import read_history
from omnistream.supervise.programs import Program, build_programs
from omnistream.supervise.watchdog import Backoff


def parsed(path: Path) -> ServerOptions:
    options = ServerOptions()
    options.realize(args=["-c", str(path)])
    return options


def test_programs_get_their_exact_command_and_environment(tmp_path: Path) -> None:
    """The command supervisord parses from the file runs with every variable exactly as given."""
    settings = Settings(stack={"state_dir": tmp_path / "state"})
    layout = Layout.from_settings(settings)
    tricky = {"PASSWORD": "'p%40ss,\"word\"=\\x'", "PLAIN": "value"}
    show = "import os, json; print(json.dumps([os.environ['PASSWORD'], os.environ['PLAIN'], '50% done']))"
    program = Program("tricky", "pipeline", [sys.executable, "-c", show], tmp_path, tricky)
    path, changed = config.write(settings, layout, [program])
    assert changed and oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(config.env_file(layout, program).stat().st_mode & 0o777) == "0o600"  # secrets live here
    assert "p%40ss" not in path.read_text()  # not in supervisord's configuration
    assert config.write(settings, layout, [program]) == (path, False)
    group = next(g for g in parsed(path).process_group_configs if g.name == "tricky")
    process = group.process_configs[0]
    assert process.autostart is False
    assert process.stopasgroup and process.killasgroup
    ran = subprocess.run(shlex.split(process.command), capture_output=True, text=True, check=True)
    assert json.loads(ran.stdout) == [tricky["PASSWORD"], "value", "50% done"]


def test_every_catalogued_service_becomes_a_program(tmp_path: Path) -> None:
    settings = Settings(stack={"state_dir": tmp_path / "state"})
    layout = Layout.from_settings(settings)
    (layout.dist / "greenmail").mkdir(parents=True)
    (layout.dist / "greenmail" / "greenmail-standalone-2.1.8.jar").touch()
    programs = build_programs(settings, layout)
    assert [p.name for p in programs] == [s.name for s in SERVICES]
    path, _ = config.write(settings, layout, programs)
    names = {g.name for g in parsed(path).process_group_configs}
    assert names == {s.name for s in SERVICES} | {"events"}
    postgres = next(p for p in programs if p.name == "postgres")
    assert postgres.stop_signal == "INT"  # PostgreSQL's fast shutdown


def test_restarts_are_counted_from_unasked_starts_only(tmp_path: Path) -> None:
    journal = tmp_path / "events.jsonl"
    lines = [
        '{"at": 1, "process": "sink", "from": "STOPPED", "to": "STARTING"}',  # started by `up`
        '{"at": 2, "process": "sink", "from": "RUNNING", "to": "EXITED", "expected": "0"}',
        '{"at": 3, "process": "sink", "from": "EXITED", "to": "STARTING"}',  # died: a restart
        '{"at": 4, "process": "kafka", "from": "BACKOFF", "to": "STARTING"}',
        '{"at": 5, "process": "kafka", "from": "FATAL", "to": "STARTING"}',
        '{"at": 6, "process": "kaf',  # cut short by a crash
    ]
    journal.write_text("\n".join(lines))
    history = read_history(journal)
    assert history.restarts == Counter({"sink": 1, "kafka": 2})
    assert history.last_restart_at == {"sink": 3.0, "kafka": 5.0}
    assert history.unexpected_exits == Counter({"sink": 1})


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first_s=10, max_s=35)
    delays = [backoff.attempted("connector/x", now=0) for _ in range(4)]
    assert delays == [10, 20, 35, 35]
    assert not backoff.ready("connector/x", now=30)
    assert backoff.ready("connector/x", now=35)
    backoff.healthy("connector/x")
    assert backoff.attempted("connector/x", now=0) == 10
