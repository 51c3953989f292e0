"""The dashboard in a real browser: Debian's Chromium, headless, driven through chromedriver
against the real app (uvicorn, on a free loopback port) on a fresh database, with a real
orchestrator and participants on RabbitMQ moving the sagas.

It lists and filters sagas, opens one, checks its timeline is drawn to scale from the
history, cancels a running saga through the confirmation dialog, and sees a cancel past the
pivot refused with the API's reason. Screenshots of each stage go to $SAGA_TEST_ARTIFACTS
(default tests/artifacts/)/dashboard/.

The browser runs in a worker thread (`asyncio.to_thread`): the app and the orchestrator share
the test's event loop, which must keep serving while the browser waits for it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from adapters.participant.core import Participant, StepFailed
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.messages import Command
from orchestrator.ports import HistoryRecord
from tests.fixtures.must_run import unavailable
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system
from tests.integration.hosted import host

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

CHROMIUM = Path(os.environ.get("SAGA_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SAGA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = (
    Path(os.environ.get("SAGA_TEST_ARTIFACTS") or Path(__file__).parents[1] / "artifacts")
    / "dashboard"
)
CARD = "4111111111111111"
MARKUP_KEY = "beacon-<b>1</b><img src=x onerror=alert(1)>"  # must show as text
T = TypeVar("T")

# -- the sagas the dashboard shows ---------------------------------------------------------

QUICK = Retry(max_attempts=3, initial_interval=0.05, max_interval=0.05, jitter=0)


class Job(BaseModel):
    job_id: str
    card_number: str = ""  # redacted by the API: the page must never show it
    parcels: list[str] = Field(default_factory=lambda: ["small", "large"])
    prepare_ms: int = 20
    brew_ms: int = 20
    flaky: bool = False  # brew's first attempt fails (retryably)
    hold: str = ""  # this step's command waits until the test lets it go
    decline: str = ""  # this step fails for good


class Ping(BaseModel):
    n: int


def parcels(ctx: GuardContext) -> list[Any]:
    return list(ctx.input["parcels"])


# prepare -> brew (retried) -> pack (one item per parcel) -> ship (the pivot) -> label
lab = Saga("lab", version=1, input=Job, timeout=60)
lab.remote("prepare", command="lab.prepare", compensation="lab.unprepare")
lab.remote("brew", command="lab.brew", compensation="lab.unbrew", retry=QUICK)
lab.map("pack", command="lab.pack", items=parcels, compensation="lab.unpack")
lab.remote("ship", command="lab.ship", pivot=True, retry=Retry(max_attempts=1))
lab.remote("label", command="lab.label", retry=QUICK)

beacon = Saga("beacon", version=1, input=Ping, timeout=30)
beacon.remote("ping", command="lab.ping", compensation=None)


class Lab:
    """The participant: sleeps, fails and holds as each saga's input says."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def participant(self) -> Participant:
        lab_svc = Participant("lab")

        async def work(cmd: Command, step: str, ms: int = 20) -> dict[str, Any]:
            job = cmd.payload
            await asyncio.sleep(ms / 1000)
            if job.get("hold") == step:
                await asyncio.wait_for(self.release.wait(), timeout=60)
            if job.get("decline") == step:
                raise StepFailed("declined", f"{step} declined", retryable=False)
            return {"step": step, "attempt": cmd.attempt, "token": "never-shown"}

        @lab_svc.handler("lab.prepare")
        async def prepare(cmd: Command) -> dict[str, Any]:
            return await work(cmd, "prepare", cmd.payload["prepare_ms"])

        @lab_svc.handler("lab.brew")
        async def brew(cmd: Command) -> dict[str, Any]:
            if cmd.payload["flaky"] and cmd.attempt == 1:
                await asyncio.sleep(0.1)
                raise StepFailed("kettle_cold", "the kettle was cold", retryable=True)
            return await work(cmd, "brew", cmd.payload["brew_ms"])

        @lab_svc.handler("lab.pack")
        async def pack(cmd: Command) -> dict[str, Any]:
            return await work(cmd, "pack")

        @lab_svc.handler("lab.ship")
        async def ship(cmd: Command) -> dict[str, Any]:
            return await work(cmd, "ship")

        @lab_svc.handler("lab.label")
        async def label(cmd: Command) -> dict[str, Any]:
            return await work(cmd, "label")

        @lab_svc.handler("lab.ping")
        async def ping(cmd: Command) -> dict[str, Any]:
            return {"pong": cmd.payload["n"]}

        async def compensate(cmd: Command) -> dict[str, Any]:
            await asyncio.sleep(0.03)
            return {"undone": cmd.step}

        for undo in ("lab.unprepare", "lab.unbrew", "lab.unpack"):
            lab_svc.handler(undo)(compensate)

        return lab_svc


# -- the browser and the server ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        unavailable(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1100",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port in this event loop; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()  # raise what stopped it
        return server.started

    try:
        await eventually(started, timeout=10, message="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()


def make_app(settings: Settings, store: PostgresStore, system: System | None = None) -> FastAPI:
    from adapters.http.app import create_app

    engine = system.orchestrator.engine if system is not None else None
    return create_app(settings, store, engine)


class Page:
    """The browser on one base URL: polling waits with deadlines, and screenshots."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def until(self, probe: Callable[[], T | None], message: str, timeout: float = 15) -> T:
        wait = WebDriverWait(
            self.driver,
            timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        )
        found = wait.until(lambda _driver: probe(), message)
        assert found is not None  # `until` returns only a truthy value
        return found

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        print(f"dashboard screenshot: {path}")
        return path

    # What the pages show, read in one go (the live refresh may replace elements at any time).

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = self.js(
            "return Object.fromEntries([...document.querySelectorAll('#counts [data-status]')]"
            ".map(b => [b.dataset.status, Number(b.querySelector('.n').textContent)]))"
        )
        return found

    def rows(self) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.js(
            "return [...document.querySelectorAll('#sagas tbody tr')].map(tr => ({"
            "id: tr.dataset.sagaId, status: tr.dataset.status, key: tr.cells[0].textContent,"
            "saga: tr.cells[1].textContent.split(' ')[0]}))"
        )
        return found

    def saga_status(self) -> str | None:
        status: str | None = self.js(
            "const s = document.querySelector('#summary .status'); return s && s.textContent"
        )
        return status

    def lanes(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = self.js(
            "return Object.fromEntries([...document.querySelectorAll('#timeline g.lane')]"
            ".map(g => [g.dataset.step, [...g.querySelectorAll('rect.bar')].map(r => ({"
            "kind: r.dataset.kind, attempt: r.dataset.attempt, outcome: r.dataset.outcome,"
            "width: Number(r.getAttribute('width')), x: Number(r.getAttribute('x'))}))]))"
        )
        return found

    def history(self) -> list[list[str]]:
        found: list[list[str]] = self.js(
            "return [...document.querySelectorAll('#history tbody tr')]"
            ".map(tr => [...tr.cells].map(td => td.textContent))"
        )
        return found

    def dialog_open(self) -> bool:
        return bool(self.js("return document.getElementById('confirm').open"))

    def type_into(self, css: str, text: str) -> None:
        field = self.driver.find_element(By.CSS_SELECTOR, css)
        field.clear()
        field.send_keys(text)

    def click(self, css: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, css).click()


# -- the scenario --------------------------------------------------------------------------


async def wait_key(system: System, key: str, *statuses: str) -> str:
    state = await system.wait_status(key, *statuses, timeout=20)
    return str(state.saga_id)


def attempts(history: list[HistoryRecord]) -> dict[str, list[tuple[float, float]]]:
    """step -> (dispatched, replied) epoch seconds of each action attempt that got an answer."""
    out: dict[str, list[tuple[float, float]]] = {}
    sent: dict[str, float] = {}
    for h in history:
        if h.step is None:
            continue
        if h.event == "step_dispatched":
            sent[h.step] = h.at.timestamp()
        elif h.event in ("step_succeeded", "step_retry_scheduled") and h.step in sent:
            out.setdefault(h.step, []).append((sent.pop(h.step), h.at.timestamp()))
    return out


async def test_list_filter_open_timeline_and_cancel_with_confirmation(
    browser: WebDriver, database_url: str, topology: Topology, amqp_url: str
) -> None:
    lab_participant = Lab()
    async with running_system(database_url, topology, amqp_url, [lab, beacon]) as system:
        await host(system, lab_participant.participant())
        try:
            await scenario(browser, system, lab_participant)
        finally:
            lab_participant.release.set()  # let held commands answer before the teardown


async def scenario(browser: WebDriver, system: System, lab_participant: Lab) -> None:
    jobs: dict[str, dict[str, Any]] = {
        "lab-done": {"prepare_ms": 250, "brew_ms": 1000, "flaky": True, "card_number": CARD},
        "lab-declined": {"decline": "ship"},
        "lab-parked": {"decline": "label"},
        "lab-hold": {"hold": "brew"},
        "lab-pivot": {"hold": "label"},
    }
    for key, job in jobs.items():
        await system.start_order(key, {"job_id": key, **job}, saga="lab")
    await system.start_order(MARKUP_KEY, {"n": 1}, saga="beacon")
    ids = {
        "lab-done": await wait_key(system, "lab-done", "completed"),
        "lab-declined": await wait_key(system, "lab-declined", "compensated"),
        "lab-parked": await wait_key(system, "lab-parked", "failed"),
        "beacon": await wait_key(system, MARKUP_KEY, "completed"),
    }

    async def dispatched(key: str, step: str) -> bool:
        state = await system.saga_by_key(key)
        found = state is not None and state.step(step)
        return bool(found and found.dispatched_at is not None)

    await eventually(lambda: dispatched("lab-hold", "brew"), message="brew to be held")
    await eventually(lambda: dispatched("lab-pivot", "label"), message="label to be held")
    ids["lab-hold"] = await wait_key(system, "lab-hold", "running")
    ids["lab-pivot"] = await wait_key(system, "lab-pivot", "running")
    done_history = await system.history(uuid.UUID(ids["lab-done"]))

    app = make_app(system.settings, system.store, system)
    async with serving(app) as base:
        page = Page(browser, base)
        await asyncio.to_thread(list_and_filter, page, ids)
        await asyncio.to_thread(open_saga_and_read_its_timeline, page, ids, done_history)
        await asyncio.to_thread(cancel_past_the_pivot_is_refused, page, ids["lab-pivot"])
        await asyncio.to_thread(cancel_with_confirmation, page, ids["lab-hold"])
        lab_participant.release.set()  # brew answers: its compensation runs, then prepare's
        await wait_key(system, "lab-hold", "cancelled")
        await asyncio.to_thread(see_it_cancelled, page, ids["lab-hold"])


def list_and_filter(page: Page, ids: dict[str, str]) -> None:
    page.open("/")
    want = {
        "running": 2,
        "paused": 0,
        "compensating": 0,
        "failed": 1,
        "completed": 2,
        "compensated": 1,
        "cancelled": 0,
    }
    page.until(lambda: page.counts() == want, f"the counts to read {want}")
    page.until(lambda: len(page.rows()) == 6, "six sagas listed")
    assert {r["id"] for r in page.rows()} == set(ids.values())
    page.shot("01-list")

    # A count filters by its status; the filter lands in the URL and survives a reload.
    page.click("#counts [data-status='failed']")
    page.until(
        lambda: [r["key"] for r in page.rows()] == ["lab-parked"], "only the failed saga listed"
    )
    assert "status=failed" in page.driver.current_url
    page.shot("02-filter-status-failed")
    page.click("#counts [data-status='failed']")  # again: every status
    page.until(lambda: len(page.rows()) == 6, "every saga listed again")

    page.type_into("#filters [name=saga]", "beacon")
    page.until(lambda: [r["key"] for r in page.rows()] == [MARKUP_KEY], "only beacon listed")
    # Shown as text: the key's markup made no element.
    assert page.js("return document.querySelectorAll('#sagas img, #sagas b').length") == 0
    page.until(
        lambda: page.counts().get("completed") == 1 and page.counts().get("running") == 0,
        "the counts to follow the saga filter",
    )
    assert "saga=beacon" in page.driver.current_url
    page.shot("03-filter-saga-beacon")
    page.open("/?saga=lab&status=running")  # a shared link
    page.until(
        lambda: sorted(r["key"] for r in page.rows()) == ["lab-hold", "lab-pivot"],
        "the shared link's filters applied",
    )
    assert (
        page.driver.find_element(By.CSS_SELECTOR, "#filters [name=saga]").get_attribute("value")
        == "lab"
    )

    page.open("/?created_before=2000-01-01T00:00:00.000Z")
    page.until(lambda: page.driver.find_element(By.ID, "empty").is_displayed(), "no saga")
    created_before = page.driver.find_element(By.CSS_SELECTOR, "#filters [name=created_before]")
    assert (created_before.get_attribute("value") or "").startswith("2000-01-01T00:00")
    page.open("/?in_status_for_minutes=60")
    page.until(lambda: page.driver.find_element(By.ID, "empty").is_displayed(), "no old saga")

    # Pages of 4: "load more" fetches the rest with the cursor.
    page.open("/?limit=4")
    page.until(lambda: len(page.rows()) == 4, "a first page of four")
    page.click("#more")
    page.until(lambda: len(page.rows()) == 6, "the rest after load more")
    assert not page.driver.find_element(By.ID, "more").is_displayed()
    assert len({r["id"] for r in page.rows()}) == 6

    # Open a saga from the list.
    page.open("/")
    page.until(lambda: len(page.rows()) == 6, "every saga listed")

    def click_done() -> bool:
        page.driver.find_element(By.LINK_TEXT, "lab-done").click()
        return True

    page.until(click_done, "the lab-done link to be clickable")
    page.until(
        lambda: page.driver.current_url.endswith(f"/sagas/{ids['lab-done']}"),
        "the saga page to open",
    )


def open_saga_and_read_its_timeline(
    page: Page, ids: dict[str, str], history: list[HistoryRecord]
) -> None:
    page.until(lambda: page.saga_status() == "completed", "the saga page to load")
    page.until(lambda: len(page.history()) == len(history), "every history row shown")
    rows = page.history()
    assert [r[0] for r in rows] == [str(h.seq) for h in history]
    assert [r[2] for r in rows] == [h.event for h in history]
    assert [r[3] for r in rows] == [h.step or "" for h in history]

    # One bar per dispatched attempt, in the step's own lane (map items included).
    lanes = page.lanes()
    for step in ("prepare", "brew", "pack[0]", "pack[1]", "ship", "label"):
        sent = [h for h in history if h.event == "step_dispatched" and h.step == step]
        bars = [b for b in lanes[step] if b["kind"] == "action"]
        assert [b["attempt"] for b in bars] == [str(h.detail["attempt"]) for h in sent if h.detail]
    brew = [b for b in lanes["brew"] if b["kind"] == "action"]
    assert [b["outcome"] for b in brew] == ["retry", "succeeded"]
    assert lanes["pack"][0]["kind"] == "map"

    # Drawn to scale: widths are in the ratio of the durations the history records.
    took = attempts(history)
    [(p0, p1)] = took["prepare"]
    (b0, b1) = took["brew"][1]
    [prepare_bar] = [b for b in lanes["prepare"] if b["kind"] == "action"]
    ratio = brew[1]["width"] / prepare_bar["width"]
    # (Not "brew is 4x longer": on a loaded machine prepare's 0.25 s can stretch.)
    assert ratio == pytest.approx((b1 - b0) / (p1 - p0), rel=0.02)
    # ... and positions follow the clock: brew's second attempt starts after prepare ends.
    assert brew[1]["x"] >= prepare_bar["x"] + prepare_bar["width"] - 0.5

    # Redacted by the API, shown as it came: the card number never reaches the page.
    inputs = page.driver.find_element(By.ID, "input").text
    assert '"card_number": "***"' in inputs
    assert CARD not in page.driver.page_source
    assert "never-shown" not in page.driver.page_source  # a result's "token" field

    # Actions that cannot apply to a completed saga are disabled, saying why.
    cancel = page.driver.find_element(By.ID, "action-cancel")
    assert not cancel.is_enabled()
    assert "already completed" in (cancel.get_attribute("title") or "")
    assert not page.driver.find_element(By.ID, "action-retry").is_enabled()
    page.shot("04-saga-completed-timeline")

    page.open(f"/sagas/{ids['lab-declined']}")
    page.until(lambda: page.saga_status() == "compensated", "the compensated saga to load")
    comp = {s: [b for b in bars if b["kind"] == "compensation"] for s, bars in page.lanes().items()}
    assert [b["outcome"] for b in comp["brew"]] == ["succeeded"]
    assert [b["outcome"] for b in comp["prepare"]] == ["succeeded"]
    page.shot("05-saga-compensated-timeline")


def cancel_past_the_pivot_is_refused(page: Page, saga_id: str) -> None:
    page.open(f"/sagas/{saga_id}")
    page.until(lambda: page.saga_status() == "running", "the running saga to load")
    page.click("#action-cancel")
    page.until(page.dialog_open, "the confirmation dialog to open")
    page.type_into("#confirm-reason", "customer changed their mind")
    page.click("#confirm-ok")
    error = page.until(
        lambda: page.driver.find_element(By.ID, "confirm-error").text or None,
        "the refusal to be shown",
    )
    assert "pivot" in error and "'ship'" in error, error
    assert page.dialog_open()  # still open, saying why
    page.shot("06-cancel-refused-past-pivot")
    page.click("#confirm-back")
    page.until(lambda: not page.dialog_open(), "the dialog to close")
    assert page.saga_status() == "running"


def cancel_with_confirmation(page: Page, saga_id: str) -> None:
    page.open(f"/sagas/{saga_id}")
    page.until(lambda: page.saga_status() == "running", "the running saga to load")
    assert not page.driver.find_element(By.ID, "action-resume").is_enabled()
    page.click("#action-cancel")
    page.until(page.dialog_open, "the confirmation dialog to open")
    page.click("#confirm-ok")  # no reason yet: the dialog insists on one
    assert page.dialog_open()
    page.type_into("#confirm-reason", "duplicate order")
    page.type_into("#confirm-who", "alice")
    page.shot("07-cancel-confirmation")
    page.click("#confirm-ok")
    page.until(lambda: not page.dialog_open(), "the dialog to close after the cancel")
    page.until(lambda: page.saga_status() in ("compensating", "cancelled"), "the cancel to show")
    page.until(
        lambda: any(r[2] == "saga_cancel_accepted" and r[4] == "api:alice" for r in page.history()),
        "the cancel in the history, with who did it",
    )
    page.shot("08-cancel-accepted")


def see_it_cancelled(page: Page, saga_id: str) -> None:
    page.until(lambda: page.saga_status() == "cancelled", "the page to refresh to cancelled")
    comp = [b for b in page.lanes()["prepare"] if b["kind"] == "compensation"]
    assert [b["outcome"] for b in comp] == ["succeeded"]
    page.shot("09-cancelled")
    page.open("/")
    page.until(lambda: page.counts().get("cancelled") == 1, "the list to count the cancelled saga")
    page.shot("10-list-after-cancel")


# -- the pages themselves, without a browser -----------------------------------------------


async def test_pages_are_shells_under_a_strict_policy_serving_only_listed_assets() -> None:
    from adapters.http import dashboard

    app = FastAPI()
    app.include_router(dashboard.router)
    # Behind a proxy that mounts the app under /ops, every link keeps the prefix.
    transport = httpx.ASGITransport(app=app, root_path="/ops")
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
        page = await client.get("/ops/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert '<script src="/ops/static/dashboard.js" defer></script>' in page.text
        assert "http://" not in page.text and "https://" not in page.text  # nothing external

        saga = await client.get("/ops/sagas/7b270657-4e84-4411-8db8-11e31abda122")
        assert 'data-saga-id="7b270657-4e84-4411-8db8-11e31abda122"' in saga.text
        bad = await client.get("/ops/sagas/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")
        assert bad.status_code == 404
        assert "&lt;img src=x onerror=alert(1)&gt;" in bad.text and "<img" not in bad.text

        css = await client.get("/ops/static/dashboard.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        for path in ("/ops/static/..%2Fdashboard.py", "/ops/static/__init__.py"):
            assert (await client.get(path)).status_code == 404


# -- a token, when the API wants one -------------------------------------------------------


async def test_the_pages_ask_for_a_token_and_keep_it_out_of_urls(
    browser: WebDriver, pg_store: PostgresStore, database_url: str
) -> None:
    settings = Settings(database_url=database_url, api_tokens="viewer:read:s3cr3t-t0ken")
    async with serving(make_app(settings, pg_store)) as base:
        await asyncio.to_thread(enter_token, Page(browser, base))


def enter_token(page: Page) -> None:
    page.open("/")
    page.js("sessionStorage.clear()")
    page.open("/")
    page.until(
        lambda: page.driver.find_element(By.ID, "token-form").is_displayed(),
        "the token form to appear on 401",
    )
    page.shot("11-token-asked")
    page.type_into("#token-input", "s3cr3t-t0ken")
    page.click("#token-form button[type=submit]")
    page.until(lambda: page.counts().get("running") == 0, "the counts to load with the token")
    assert not page.driver.find_element(By.ID, "alert").is_displayed()
    assert "s3cr3t" not in page.driver.current_url
    page.open("/?status=running")  # a reload in the same tab keeps the token
    page.until(lambda: len(page.counts()) == 7, "the counts to load again")
    assert not page.driver.find_element(By.ID, "token-form").is_displayed()
