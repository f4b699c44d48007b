"""How the controller serves the dashboard's built files: the page with a policy that lets
it run only its own bundled code, hashed assets by name only, a clear answer when the
dashboard was not built."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from controller.dashboard import Dashboard


async def client_for(dashboard: Dashboard) -> TestClient:
    app = web.Application()
    dashboard.add_routes(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
def built(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text('<main id="app"></main>')
    (tmp_path / "assets" / "index-AbC123.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not an asset")
    return tmp_path


async def test_page_assets_and_config(built):
    client = await client_for(Dashboard(built, gateway_http_url="http://127.0.0.1:7280"))
    try:
        page = await client.get("/")
        assert page.status == 200 and '<main id="app">' in await page.text()
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        asset = await client.get("/assets/index-AbC123.js")
        assert asset.status == 200 and asset.headers["Content-Type"].startswith("text/javascript")
        assert "immutable" in asset.headers["Cache-Control"]
        for name in ("..%2Fsecret.txt", ".hidden", "missing.js", "%2e%2e%2fsecret.txt"):
            refused = await client.get(f"/assets/{name}")
            assert refused.status == 404, name
        config = await client.get("/dashboard.json")
        assert await config.json() == {"gatewayHttpUrl": "http://127.0.0.1:7280"}
    finally:
        await client.close()


async def test_an_unbuilt_dashboard_says_how_to_build_it(tmp_path):
    client = await client_for(Dashboard(tmp_path / "nothing"))
    try:
        page = await client.get("/")
        assert page.status == 503
        assert "make setup" in await page.text()
    finally:
        await client.close()
