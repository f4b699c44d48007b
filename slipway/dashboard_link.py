"""The one-click dashboard link `slipway up` prints: the controller's HTTP address with the
local admin key in the URL fragment (`#key=…`), which browsers never send to a server, so
it reaches no log; the page moves it to sessionStorage and clears it from the address bar."""

from __future__ import annotations

import urllib.parse
from typing import Any

from slipway.credentials import ADMIN_KEY_FILE


def dashboard_link(http_url: str, controller_config: Any) -> str:
    """`http_url/`, signed in as the local admin when API keys are on and its key is readable."""
    if not controller_config.keys.require_api_keys:
        return f"{http_url}/"
    try:
        key = (controller_config.data_dir / ADMIN_KEY_FILE).read_text().strip()
    except OSError:
        return f"{http_url}/  (sign in with an API key)"
    return f"{http_url}/#key={urllib.parse.quote(key, safe='')}"
