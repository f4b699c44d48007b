"""The dashboard's files on the controller's HTTP port: `/` is the built web app (web/dist,
made by `make setup`), `/assets/*` its bundled scripts and styles (every asset is in the
bundle: no CDN), and `/dashboard.json` what the page cannot learn from the API (where the
gateway serves predictions, for the copyable curl lines). The page itself calls only the
public API (Connect JSON on the same port)."""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

from aiohttp import web

DEFAULT_DIR = pathlib.Path(__file__).resolve().parent.parent / "web" / "dist"
ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}
# The page runs only its own bundled code and talks only to this origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class Dashboard:
    directory: pathlib.Path = DEFAULT_DIR
    # The gateway's HTTP address (`slipway up` sets it once its gateway listens).
    gateway_http_url: str = ""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/assets/{name}", self.asset)
        app.router.add_get("/dashboard.json", self.config)

    async def index(self, _request: web.Request) -> web.StreamResponse:
        page = self.directory / "index.html"
        if not page.is_file():
            return web.json_response(
                _error(
                    "UNAVAILABLE",
                    "DASHBOARD_NOT_BUILT",
                    f"the dashboard is not built ({page} is missing): `make setup` builds it",
                ),
                status=503,
                headers=SECURITY_HEADERS,
            )
        return web.FileResponse(page, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.directory / "assets" / name
        if not ASSET_NAME.fullmatch(name) or name.startswith(".") or not path.is_file():
            return web.json_response(
                _error("NOT_FOUND", "ASSET_NOT_FOUND", f"no dashboard asset named {name[:128]!r}"),
                status=404,
                headers=SECURITY_HEADERS,
            )
        headers = {
            **SECURITY_HEADERS,
            "Cache-Control": "public, max-age=31536000, immutable",  # names carry their content hash
            "Content-Type": CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
        }
        return web.FileResponse(path, headers=headers)

    async def config(self, _request: web.Request) -> web.Response:
        return web.json_response({"gatewayHttpUrl": self.gateway_http_url}, headers={"Cache-Control": "no-cache"})


def _error(code: str, reason: str, message: str) -> dict:
    """The JSON error body the gateway's HTTP front answers too."""
    return {"error": {"code": code, "reason": reason, "message": message}}
