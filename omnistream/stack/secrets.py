"""The local stack's passwords and API token: generated at the first ``stack up``, never in the repository.

Every secret of ``settings.LOCAL_SECRETS`` that no environment variable or ``.env.local`` sets is drawn
at random once and kept in ``<state_dir>/secrets.json`` (mode 0600). The settings read that file (see
``Settings._fill_local_secrets``), so every command and every supervised process of this stack agrees on
them; ``stack down --purge`` deletes it with the data it protects.
"""

from __future__ import annotations

import json
import os
import secrets

from pydantic import SecretStr

from omnistream.settings import LOCAL_SECRETS, SECRETS_FILE, Settings, read_local_secrets


def ensure_local_secrets(settings: Settings) -> list[str]:
    """Fill the unset secrets of ``settings`` from the state's file, drawing (and storing) the ones it lacks;
    returns the names of those drawn now."""
    stored = read_local_secrets(settings.stack.state_dir)
    drawn = []
    for section, key in LOCAL_SECRETS:
        model = getattr(settings, section)
        if getattr(model, key).get_secret_value():
            continue
        name = f"{section}.{key}"
        if name not in stored:
            stored[name] = secrets.token_urlsafe(18)
            drawn.append(name)
        setattr(model, key, SecretStr(stored[name]))
    if drawn:
        path = settings.stack.state_dir / SECRETS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
        tmp.replace(path)
    return drawn
