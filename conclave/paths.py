"""Where Conclave keeps a user's own files: the API key clients sign with and the
development CA `conclave dev` makes, both found there by the CLI and the SDK."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """$XDG_CONFIG_HOME/conclave, else ~/.config/conclave."""
    config = os.environ.get("XDG_CONFIG_HOME", "").strip()
    # XDG Base Directory spec: a relative path in the variable is to be ignored.
    if not config or not os.path.isabs(config):
        config = str(Path.home() / ".config")
    return Path(config) / "conclave"
