"""Where central is, as every piece on a machine finds it: the one default URL and port, the state directory, and
the URL file `central serve` writes there.

Kept below central/, the pilot and the CE (layer 4), so the runner and the CE resolve central exactly as the user
commands do without importing the service.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

#: The port `central serve` listens on unless told otherwise, and the one every client assumes.
DEFAULT_PORT = 8765
DEFAULT_CENTRAL_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
CENTRAL_URL_ENV = "GRIDPILOT_CENTRAL_URL"
STATE_DIR_ENV = "GRIDPILOT_STATE_DIR"
#: Written by `central serve` so the commands on the same machine find the service without flags.
URL_FILE = "central.url"


def default_state_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """GRIDPILOT_STATE_DIR, else $XDG_STATE_HOME/gridpilot, else ~/.local/state/gridpilot."""
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser()
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "gridpilot"


def url_from_state_dir(state_dir: Path) -> Optional[str]:
    """The URL `central serve` wrote into `state_dir`, or None when there is none to read."""
    try:
        text = (state_dir / URL_FILE).read_text().strip()
    except OSError:
        return None
    return text or None


def check_central_url(url: str) -> str:
    """`url` when it is an http(s) URL with a host and a port in range; ValueError saying what is wrong otherwise
    (with a "did you mean http://..." for a bare HOST:PORT). For every piece that takes central's URL from a
    person: the caller names where it came from (flag, variable, file and line)."""
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError as e:
        raise ValueError(f"{url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f" (did you mean http://{url}?)" if "://" not in url else ""
        raise ValueError(f"{url!r} is not a URL of central: give http://HOST:PORT or https://HOST:PORT{hint}")
    return url
