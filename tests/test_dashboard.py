"""The dashboard end to end: a real controller (API keys on) serving the built web app at /,
a real gateway and replicas, the real CLI, and Debian's chromium in headless mode driven by
Playwright (never a browser of its own). Each page's screenshot is written under
.artifacts/dashboard/ (gitignored), the test artifacts."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner, Result

from controller.dashboard import DEFAULT_DIR
from controller.keys import ADMIN_KEY_FILE, KeySettings
from controller.server import Controller
from slipway.cli import cli
from tests.conftest import (
    ECHO_MODEL,
    controller_settings,
    start_gateway,
    stop_or_explain,
    wait_until,
    write_package,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / ".artifacts" / "dashboard"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="Debian's chromium is missing (make test installs it)"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def platform(tmp_path_factory):
    assert (DEFAULT_DIR / "index.html").is_file(), "the dashboard is not built: make setup (make web) builds it"
    data_dir = tmp_path_factory.mktemp("dashboard") / "data"
    controller = await Controller.start(controller_settings(data_dir, keys=KeySettings()))
    gateway = await start_gateway(controller)
    controller.settings.dashboard.gateway_http_url = f"http://127.0.0.1:{gateway.http_port}"
    yield controller, gateway, (data_dir / ADMIN_KEY_FILE).read_text().strip()
    await stop_or_explain(gateway.stop(), "gateway")
    await stop_or_explain(controller.stop(), "controller")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(platform, tmp_path_factory):
    from playwright.async_api import async_playwright

    controller, _, key = platform
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # Every asset is bundled (machines may be offline): the page asks nothing of any other origin.
        elsewhere: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(controller.http_url) else elsewhere.append(r.url))
        # The one-click link `slipway up` prints signs the admin in.
        await page.goto(f"{controller.http_url}/#key={key}")
        await page.wait_for_selector('[data-page="models"]', timeout=WAIT_MS)
        yield page
        assert not errors, f"the page raised: {errors}"
        assert not elsewhere, f"the page fetched from other origins: {elsewhere}"
        await context.close()


async def slipway(controller: Controller, key: str, *args: str) -> Result:
    """The real CLI in a worker thread (the in-process controller keeps serving)."""
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--controller", controller.address, "--api-key", key, *args]
    )
    assert result.exit_code == 0, result.output
    return result


async def push(platform, tmp_path: pathlib.Path, model: str, tag: str, *flags: str) -> None:
    controller, _, key = platform
    package = write_package(tmp_path / f"{model}-{tag}", model, ECHO_MODEL.format(tag=tag))
    await slipway(controller, key, "push", str(package), "--timeout", "60", *flags)


async def model_id(platform, name: str) -> str:
    controller, _, key = platform
    result = await slipway(controller, key, "models", "get", name, "--output", "json")
    return json.loads(result.output)["id"]


async def deployment_rows(page) -> dict[str, dict]:
    """Each deployment row of the model page: name, state, production badge."""
    return {
        row["name"]: row
        for row in await page.eval_on_selector_all(
            "tr[data-deployment]",
            """rows => rows.map(r => ({
                id: r.dataset.deployment, name: r.dataset.name,
                state: r.querySelector('[data-state]').dataset.state,
                production: !!r.querySelector('[data-badge=production]')}))""",
        )
    }


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def predict_status(gateway, model: str, deployment: str) -> int:
    url = f"http://127.0.0.1:{gateway.http_port}/model/{model}/deployment/{deployment}/predict"
    async with aiohttp.ClientSession() as http, http.post(url, json={"text": "hi"}) as response:
        return response.status


async def test_sign_in_link_moves_the_key_out_of_the_url(browser, platform):
    page = browser
    assert "key=" not in page.url
    controller, _, key = platform
    assert await page.evaluate("sessionStorage.getItem('slipway.apiKey')") == key
    await shot(page, "models-empty")
    # Without a key the page asks for one, and shows what the API said.
    await page.evaluate("sessionStorage.clear()")
    await page.goto(f"{controller.http_url}/#/usage")
    await page.wait_for_selector("form.sign-in", timeout=WAIT_MS)
    assert "API_KEY_MISSING" in await page.inner_text("form.sign-in")
    await shot(page, "sign-in")
    await page.fill("input[name=api-key]", key)
    await page.click("form.sign-in button[type=submit]")
    await page.wait_for_selector('[data-page="models"]', timeout=WAIT_MS)


async def test_model_page_follows_pushes_and_actions_live(browser, platform, tmp_path):
    page, (controller, gateway, _) = browser, platform
    await push(platform, tmp_path, "alpha", "v1")
    model = await model_id(platform, "alpha")
    await page.goto(f"{controller.http_url}/#/model/{model}")
    await page.wait_for_selector('[data-live="live"]', timeout=WAIT_MS)
    await page.wait_for_selector('tr[data-name="development"] [data-state="ACTIVE"]', timeout=WAIT_MS)
    await page.evaluate("window.notReloaded = true")

    # A push from the CLI appears without a reload (WatchDeployments over Connect).
    await push(platform, tmp_path, "alpha", "v2", "--promote")
    await page.wait_for_selector('tr[data-name="deployment-1"] [data-badge="production"]', timeout=WAIT_MS)
    await push(platform, tmp_path, "alpha", "v3", "--publish")
    await page.wait_for_selector('tr[data-name="deployment-2"] [data-state="ACTIVE"]', timeout=WAIT_MS)
    assert await page.evaluate("window.notReloaded") is True
    rows = await deployment_rows(page)
    first, second = rows["deployment-1"]["id"], rows["deployment-2"]["id"]
    # Rename is not offered for development (always named so).
    assert await page.query_selector('tr[data-name="development"] [data-action="rename"]') is None
    endpoints = await page.inner_text(".endpoints")
    assert f"http://127.0.0.1:{gateway.http_port}/model/{model}/production/predict" in endpoints
    assert f"slipway predict alpha --deployment {second}" in endpoints
    await shot(page, "model")

    # Deactivate from the page: the endpoint answers 404 and the page shows INACTIVE.
    await page.click(f'tr[data-deployment="{second}"] [data-action="deactivate"]')
    await page.wait_for_selector(f'tr[data-deployment="{second}"] [data-state="INACTIVE"]', timeout=WAIT_MS)
    assert await predict_status(gateway, model, second) == 404
    # Activate brings it back.
    await page.click(f'tr[data-deployment="{second}"] [data-action="activate"]')
    await page.wait_for_selector(f'tr[data-deployment="{second}"] [data-state="ACTIVE"]', timeout=WAIT_MS)
    assert await predict_status(gateway, model, second) == 200

    # Deleting production is refused with the rule's message and reason.
    await page.click(f'tr[data-deployment="{first}"] [data-action="delete"]')
    confirm = page.locator('[data-confirm="delete"] button[type=submit]')
    assert await confirm.is_disabled()  # until the name is typed
    await page.fill("input[name=confirm-name]", "deployment-1")
    await confirm.click()
    await page.wait_for_selector(".notice-error", timeout=WAIT_MS)
    refusal = await page.inner_text(".notice-error")
    assert "PRODUCTION_NOT_DELETABLE" in refusal and first in refusal, refusal
    assert (await deployment_rows(page))["deployment-1"]["production"]
    await shot(page, "model-refusal")

    # Promote: the production badge moves.
    await page.click(f'tr[data-deployment="{second}"] [data-action="promote"]')
    await page.wait_for_selector(f'tr[data-deployment="{second}"] [data-badge="production"]', timeout=WAIT_MS)
    await page.locator(f'tr[data-deployment="{first}"] [data-badge="production"]').wait_for(
        state="detached", timeout=WAIT_MS
    )

    # Rename: a reserved name is refused with its rule; another name is taken.
    for name in ("development", "blue"):
        await page.click(f'tr[data-deployment="{second}"] [data-action="rename"]')
        await page.fill("input[name=new-name]", name)
        await page.click(".panel button[type=submit]")
        if name == "development":
            await page.wait_for_selector(".notice-error", timeout=WAIT_MS)
            refusal = await page.inner_text(".notice-error")
            assert "Rename deployment-2 refused" in refusal and "RESERVED_DEPLOYMENT_NAME" in refusal, refusal
    await page.wait_for_selector(f'tr[data-deployment="{second}"][data-name="blue"]', timeout=WAIT_MS)

    # The former production can now be deleted (typed confirmation); usage still lists it, marked.
    await page.click(f'tr[data-deployment="{first}"] [data-action="delete"]')
    await page.fill("input[name=confirm-name]", "deployment-1")
    await page.click('[data-confirm="delete"] button[type=submit]')
    await page.locator(f'tr[data-deployment="{first}"]').wait_for(state="detached", timeout=WAIT_MS)
    assert await predict_status(gateway, model, first) == 404
    await page.click('nav a[data-nav="usage"]')
    await page.wait_for_selector(f'tr[data-usage="{first}"] [data-badge="deleted"]', timeout=WAIT_MS)
    assert await page.query_selector(f'tr[data-usage="{second}"] [data-badge="deleted"]') is None
    today = await page.evaluate("new Date().toISOString().slice(0, 10)")
    await page.wait_for_selector(f'tr[data-usage-day="{today}/{first}"].deleted', timeout=WAIT_MS)
    await shot(page, "usage")

    # The models page lists the model with its production deployment.
    await page.click('nav a[data-nav="models"]')
    await page.wait_for_selector(f'tr[data-model="{model}"]', timeout=WAIT_MS)
    assert second in await page.inner_text(f'tr[data-model="{model}"]')
    await shot(page, "models")


async def test_deployment_page_charts_traffic(browser, platform, tmp_path):
    page, (controller, gateway, _) = browser, platform
    await push(platform, tmp_path, "charted", "v1")
    model = await model_id(platform, "charted")
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            url = f"http://127.0.0.1:{gateway.http_port}/model/{model}/development/predict"
            async with http.post(url, json={"n": 1}) as response:
                assert response.status == 200
    listed = await slipway(
        controller, platform[2], "deployments", "get", "--model", model, "development", "--output", "json"
    )
    import json

    deployment = json.loads(listed.output)["id"]
    await page.goto(f"{controller.http_url}/#/deployment/{deployment}")
    requests = '[data-chart="Requests/s by status class"]'
    for chart in (requests, '[data-chart="Latency"]'):
        await page.wait_for_function(
            "selector => Number(document.querySelector(selector)?.dataset.total || 0) > 0", arg=chart, timeout=WAIT_MS
        )
    # The chart's canvas has its series drawn (pixels in the 2xx colour).
    drawn = await page.eval_on_selector(
        f"{requests} canvas",
        """canvas => { const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0x2e && d[i+1] === 0x7d && d[i+2] === 0x32) n++;
            return n; }""",
    )
    assert drawn > 0
    assert "deployment." in await page.inner_text("table.events")
    await shot(page, "deployment")

    # The autoscaling form: development's is fixed (the rule's refusal is shown) ...
    await page.fill('[data-form="autoscaling"] input[name=maxReplica]', "3")
    await page.click('[data-form="autoscaling"] button[type=submit]')
    await page.wait_for_selector(".notice-error", timeout=WAIT_MS)
    assert "DEVELOPMENT_AUTOSCALING_FIXED" in await page.inner_text(".notice-error")
    # ... a published deployment's changes, only the fields changed (their mask paths).
    await push(platform, tmp_path, "charted", "v2", "--publish")
    listed = await slipway(
        controller, platform[2], "deployments", "get", "--model", model, "deployment-1", "--output", "json"
    )
    published = json.loads(listed.output)["id"]
    await page.goto(f"{controller.http_url}/#/deployment/{published}")
    await page.wait_for_selector('[data-form="autoscaling"] input[name=maxReplica]', timeout=WAIT_MS)
    await page.fill('[data-form="autoscaling"] input[name=maxReplica]', "3")
    await page.fill('[data-form="autoscaling"] input[name=scaleDownDelay]', "120")
    await page.click('[data-form="autoscaling"] button[type=submit]')
    await page.wait_for_selector(".notice-ok", timeout=WAIT_MS)
    updated = json.loads(
        (await slipway(controller, platform[2], "deployments", "get", published, "--output", "json")).output
    )
    settings = updated["autoscaling_settings"]
    assert (settings["max_replica"], settings["scale_down_delay"], settings.get("min_replica", 0)) == (3, 120, 0)


async def test_keys_page_creates_once_lists_and_revokes(browser, platform):
    page, (controller, _, _) = browser, platform
    await page.goto(f"{controller.http_url}/#/keys")
    await page.wait_for_selector('[data-page="keys"] tr[data-key]', timeout=WAIT_MS)  # the admin key
    await page.fill("input[name=key-name]", "browser-made")
    await page.select_option("select[name=key-scope]", label="inference")
    await page.click(".create-key button[type=submit]")
    await page.wait_for_selector(".created-key code", timeout=WAIT_MS)
    secret = await page.inner_text(".created-key code")
    assert secret.startswith("sk_")
    key_id = secret.split("_")[1]
    await page.wait_for_selector(f'tr[data-key="{key_id}"]', timeout=WAIT_MS)
    await shot(page, "keys")
    # The new key works, until it is revoked from the page.
    async with aiohttp.ClientSession() as http:
        call = f"{controller.http_url}/slipway.v1.ModelService/ListModels"
        headers = {"Authorization": f"Api-Key {secret}"}
        async with http.post(call, json={}, headers=headers) as response:
            assert response.status == 403  # an inference key may not manage
        await page.click(f'tr[data-key="{key_id}"] [data-action="revoke"]')
        await page.locator(f'tr[data-key="{key_id}"]').wait_for(state="detached", timeout=WAIT_MS)
        async with http.post(call, json={}, headers=headers) as response:
            assert response.status == 401
            assert "API_KEY_REVOKED" in await response.text()


# Prints and logs while handling a request (README "Logs": each line carries the request's ID).
TALKING_MODEL = """
import logging

log = logging.getLogger("talker")

class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        print("loaded the talker")

    def predict(self, model_input):
        print(f"handling {model_input['text']}")
        log.warning(f"warning for {model_input['text']}")
        for n in range(model_input.get("lines", 0)):
            print(f"line {n} of {model_input['text']}")
        return {"ok": True}
"""


async def log_lines(page) -> list[dict]:
    return await page.eval_on_selector_all(
        "[data-logs] li",
        """items => items.map(i => ({request: i.dataset.requestId, level: i.dataset.level,
            message: i.querySelector('.log-message').textContent}))""",
    )


async def test_deployment_page_tails_and_searches_logs(browser, platform, tmp_path):
    page, (controller, gateway, key) = browser, platform
    package = write_package(tmp_path / "talker", "talker", TALKING_MODEL)
    await slipway(controller, key, "push", str(package), "--timeout", "60")
    model = await model_id(platform, "talker")
    listed = await slipway(controller, key, "deployments", "get", "--model", model, "development", "--output", "json")
    deployment = json.loads(listed.output)["id"]
    await page.goto(f"{controller.http_url}/#/deployment/{deployment}")
    # The tail is open (one TailLogs call on the controller) and shows what the model printed at load.
    await page.wait_for_selector('[data-logs] li:has-text("loaded the talker")', timeout=WAIT_MS)
    assert controller.log_servicer.tails == 1

    # Requests made now, each with its caller's ID: their lines arrive in the open panel.
    url = f"http://127.0.0.1:{gateway.http_port}/model/{model}/development/predict"
    async with aiohttp.ClientSession() as http:
        for request_id, text in (("dash-first-1", "first"), ("dash-second-2", "second")):
            async with http.post(url, json={"text": text}, headers={"X-Request-Id": request_id}) as response:
                assert response.status == 200
                assert response.headers["X-Slipway-Request-Id"] == request_id
    await page.wait_for_selector('[data-logs] li[data-request-id="dash-second-2"]', timeout=WAIT_MS)
    await page.wait_for_function(
        "() => document.querySelectorAll('[data-logs] li[data-request-id]:not([data-request-id=\"\"])').length >= 4",
        timeout=WAIT_MS,
    )
    live = await log_lines(page)
    assert {"handling first", "warning for first", "handling second", "warning for second"} <= {
        line["message"] for line in live
    }
    await shot(page, "deployment-logs")

    # A request-ID search shows exactly that request's lines (and closes the tail).
    await page.fill('[data-form="logs"] input[name=requestId]', "dash-first-1")
    await page.click('[data-form="logs"] button[type=submit]')
    await page.wait_for_selector('[data-logs-state="found"]', timeout=WAIT_MS)
    found = await log_lines(page)
    assert sorted((line["request"], line["message"]) for line in found) == [
        ("dash-first-1", "handling first"),
        ("dash-first-1", "warning for first"),
    ]
    await wait_until(lambda: controller.log_servicer.tails == 0, what="the tail closed by the search")
    await shot(page, "deployment-logs-search")

    # The level filter narrows the search.
    await page.select_option('[data-form="logs"] select[name=level]', label="Warning and above")
    await page.wait_for_function(
        "() => document.querySelector('[data-logs-state]').dataset.logsState === 'found'"
        " && document.querySelectorAll('[data-logs] li').length === 1",
        timeout=WAIT_MS,
    )
    assert [(line["level"], line["message"]) for line in await log_lines(page)] == [("warning", "warning for first")]
    # A malformed ID is refused in the page, with what an ID may hold.
    await page.fill('[data-form="logs"] input[name=requestId]', "no spaces allowed")
    await page.click('[data-form="logs"] button[type=submit]')
    await page.wait_for_selector('[data-logs-state="error"]', timeout=WAIT_MS)
    assert "1-128 characters" in await page.inner_text("[data-logs-state]")

    # Back to the live tail; leaving the page closes the stream.
    await page.click('[data-form="logs"] button[name=live]')
    await page.wait_for_selector('[data-logs] li:has-text("warning for second")', timeout=WAIT_MS)
    assert "handling second" not in {line["message"] for line in await log_lines(page)}  # still warnings only
    await wait_until(lambda: controller.log_servicer.tails == 1, what="the tail reopened")

    # The panel keeps at most 500 lines: a request printing 600 leaves the newest 500.
    await page.select_option('[data-form="logs"] select[name=level]', label="All levels")
    await page.wait_for_selector('[data-logs] li:has-text("handling second")', timeout=WAIT_MS)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": "many", "lines": 600}) as response:
            assert response.status == 200
    await page.wait_for_selector('[data-logs] li:has-text("line 599 of many")', timeout=WAIT_MS)
    shown = [line["message"] for line in await log_lines(page)]
    assert len(shown) == 500 and shown[-1] == "line 599 of many" and shown[0] == "line 100 of many"
    # The build-log toggle tails the build's records instead (this package had no build step).
    await page.check('[data-form="logs"] input[name=build]')
    await page.wait_for_function(
        "() => document.querySelector('[data-logs-state]').dataset.logsState === 'following'"
        " && !document.querySelector('[data-logs] li[data-request-id]:not([data-request-id=\"\"])')",
        timeout=WAIT_MS,
    )
    await page.goto(f"{controller.http_url}/#/models")
    await page.wait_for_selector('[data-page="models"]', timeout=WAIT_MS)
    await wait_until(lambda: controller.log_servicer.tails == 0, what="the tail closed on leaving the page")
