"""Start a supervised program with its environment from a file: ``python -m omnistream.supervise.launch
ENV_FILE -- COMMAND…``.

supervisord's own ``environment=`` syntax cannot carry every value (no escapes inside quotes, quotes at a
value's ends are dropped), and a configuration file is the wrong place for secrets anyway. So each
program's environment is a JSON file (mode 0600) beside the configuration, and this launcher ``exec``s the
command with it: the program keeps the launcher's pid, so supervisord's signals reach it directly.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m omnistream.supervise.launch ENV_FILE -- COMMAND [ARG…]")
    with open(argv[0]) as f:
        env = {**os.environ, **json.load(f)}
    command = argv[2:]
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
