"""``flowtel serve`` in a real browser: headless Chromium from Debian, driven by Selenium.

After ``flowtel demo`` the runs list shows the runs; clicking a failed run shows the failing
step's error and stack trace; a workflow running in another process advances on the open page
without a reload; hostile values show as text and no dialog opens. Needs
``FLOWTEL_CHROMEDRIVER`` (``eval "$(bash .ci/browser.sh)"`` installs Debian's chromium and
chromium-driver and prints it); skipped without it, failed under CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporters.db.engine import make_engine
from exporters.serve.app import create_app
from tests.conftest import missing_service
from tests.serve_support import (
    CHROMEDRIVER_ENV,
    CHROMIUM_ENV,
    HOSTILE,
    IMG,
    LONG_ERROR,
    LONG_ERROR_TYPE,
    LONG_STEP,
    SCRIPT,
    WIDE,
    chrome,
    seed_history,
    seed_wide_run,
    serving,
)
from tests.spawn import spawn

ROOT = Path(__file__).resolve().parent.parent


def flowtel(*args: str, **options: Any) -> subprocess.Popen[str]:
    """``flowtel ARGS`` from this checkout, in another process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return spawn(
        [sys.executable, "-m", "exporters.cli", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options,
    )  # fmt: skip


@pytest.fixture(scope="module")
def driver_path() -> str:
    path = os.environ.get(CHROMEDRIVER_ENV)
    if not path or not os.access(path, os.X_OK):
        missing_service("chromedriver", f'set {CHROMEDRIVER_ENV} (eval "$(bash .ci/browser.sh)")')
    return str(path)


@pytest.fixture(scope="module")
def history_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite history recorded by `flowtel demo`, plus runs carrying XSS payloads."""
    url = f"sqlite:///{tmp_path_factory.mktemp('browser')}/history.db"
    demo = flowtel("demo", "--runs", "30", "--db", url)
    _out, err = demo.communicate(timeout=300)
    assert demo.returncode == 0, err
    engine = make_engine(url)
    seed_history(engine, completed=0)
    seed_wide_run(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def base_url(history_url: str) -> Iterator[str]:
    app = create_app(history_url, poll_interval=0.2)
    with serving(app) as base:
        yield base
    app.state.flowtel.engine.dispose()


@pytest.fixture
def browser(driver_path: str) -> Iterator[Any]:
    driver = chrome(driver_path, os.environ.get(CHROMIUM_ENV))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def laptop(driver_path: str) -> Iterator[Any]:
    """Chromium with a 1280-pixel-wide window."""
    driver = chrome(driver_path, os.environ.get(CHROMIUM_ENV), width=1280)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll *condition* until it returns something true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # an element replaced by a live update while being read
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


def no_dialog(browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check


def test_runs_list_shows_the_demo_runs(browser: Any, base_url: str) -> None:
    """The runs list shows the demo's runs, failed ones marked failed."""
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.run")
    assert len(rows) >= 30
    assert browser.find_elements(By.CSS_SELECTOR, "tr.run.status-failed")
    assert "provision_server" in browser.find_element(By.TAG_NAME, "tbody").text


def test_clicking_a_failed_run_shows_its_error_and_stack_trace(browser: Any, base_url: str) -> None:
    """From the list, one click on a failed demo run shows the failing step's error and trace."""
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/?status=failed&workflow=provision_server")
    run_id = browser.find_element(By.CSS_SELECTOR, "tr.run.status-failed").get_attribute(
        "data-run-id"
    )
    wait_for(  # the list may be refreshed by a live update between finding and clicking
        lambda: (
            browser.find_element(By.CSS_SELECTOR, f"tr[data-run-id='{run_id}'] a").click() or True
        ),
        what="a click on the failed run",
    )
    wait_for(lambda: run_id in browser.current_url, what="the run page")
    error = browser.find_element(By.ID, "failure-error")
    assert error.is_displayed() and ":" in error.text
    stack = browser.find_element(By.ID, "stack-trace")
    assert stack.is_displayed() and "Traceback (most recent call last)" in stack.text
    assert browser.find_element(By.CSS_SELECTOR, ".steps tbody tr.status-failed")


def test_a_running_workflow_advances_without_a_reload(
    browser: Any, base_url: str, history_url: str
) -> None:
    """A demo run in another process appears and advances on the open list and run pages."""
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    browser.execute_script("window.flowtelMarker = 'same page';")
    before = {
        r.get_attribute("data-run-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")
    }

    def new_running() -> Any:
        rows = browser.find_elements(By.CSS_SELECTOR, "tr.run.status-running")
        return next((r for r in rows if r.get_attribute("data-run-id") not in before), None)

    writer = flowtel(
        "demo", "--runs", "1", "--seed", "11", "--failure-rate", "0", "--step-delay", "0.25",
        "--db", history_url,
    )  # fmt: skip
    try:
        running = wait_for(new_running, timeout=60, what="the new run in the list")
        run_id = running.get_attribute("data-run-id")
        steps = f"tr[data-run-id='{run_id}'] td:nth-child(7)"

        def done() -> int:
            return int(browser.find_element(By.CSS_SELECTOR, steps).text.split("/")[0])

        first = wait_for(done, what="a step count")
        wait_for(lambda: done() > first, timeout=30, what="the step count to advance")
        assert browser.execute_script("return window.flowtelMarker") == "same page"

        browser.get(f"{base_url}/runs/{run_id}")
        browser.execute_script("window.flowtelMarker = 'run page';")
        progress = browser.find_element(By.ID, "run-progress").text
        wait_for(
            lambda: browser.find_element(By.ID, "run-progress").text != progress,
            timeout=30, what="the run page's progress to advance",
        )  # fmt: skip
        wait_for(
            lambda: browser.find_element(By.ID, "run-status").text == "completed",
            timeout=60, what="the run to complete on its page",
        )  # fmt: skip
        assert browser.execute_script("return window.flowtelMarker") == "run page"
    finally:
        writer.kill()
        writer.communicate()


def test_xss_payloads_show_as_text_and_open_no_dialog(browser: Any, base_url: str) -> None:
    """<script> and "><img onerror> in names, errors, logs and context show as plain text."""
    from selenium.webdriver.common.by import By

    browser.get(base_url + "/")
    no_dialog(browser)
    assert f"wf{SCRIPT}" in browser.find_element(By.TAG_NAME, "tbody").text
    browser.get(f"{base_url}/runs/{HOSTILE}")
    time.sleep(0.5)  # an injected handler would have fired by now
    no_dialog(browser)
    body = browser.find_element(By.TAG_NAME, "body").text
    for shown in (f"err {SCRIPT}", f"stack {IMG}", f"log {SCRIPT}", IMG, "javascript:alert(1)"):
        assert shown in body, shown
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert browser.execute_script("return document.scripts.length") == 1


def test_runs_page_with_long_errors_fits_a_1280_pixel_window(laptop: Any, base_url: str) -> None:
    """At 1280 px the runs list, with a 1,000-character error and long ids and steps, needs
    no sideways scrolling; the error cell is shortened and carries the whole text on hover."""
    from selenium.webdriver.common.by import By

    laptop.get(base_url + "/")
    assert laptop.execute_script("return window.innerWidth") <= 1280
    width, window = laptop.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= window, (width, window)
    cell = laptop.find_element(By.CSS_SELECTOR, f"tr[data-run-id='{WIDE}'] td.run-error")
    assert LONG_ERROR in cell.get_attribute("title")
    assert len(cell.text) < len(LONG_ERROR)


def test_runs_page_never_cuts_a_workflow_name_workflow_id_or_step(
    laptop: Any, base_url: str
) -> None:
    """At 1280 px every identifier cell of the runs list shows its whole value (it wraps)."""
    from selenium.webdriver.common.by import By

    laptop.get(base_url + "/")
    cells = laptop.find_elements(By.CSS_SELECTOR, "table.runs td.ident")
    assert cells
    for cell in cells:
        whole = cell.get_attribute("title") or ""
        shown = cell.text.replace("\n", "")
        cut = laptop.execute_script(
            "return arguments[0].scrollWidth > arguments[0].clientWidth", cell
        )
        assert shown == whole and not cut, (whole, shown)


def test_runs_page_at_1280_wraps_identifiers_only_between_words(laptop: Any, base_url: str) -> None:
    """At 1280 px an identifier of up to 21 characters ("provision_server",
    "verify_ipmi_reachable") sits on one line, and a longer one whose words each fit wraps only
    after an underscore (each underscore-separated part is one unbroken box)."""
    from selenium.webdriver.common.by import By

    laptop.get(base_url + "/")
    checked = 0
    for cell in laptop.find_elements(By.CSS_SELECTOR, "table.runs td.ident"):
        whole = cell.get_attribute("title") or ""
        parts = [part for part in whole.split("_") if part]
        if not parts or max(len(part) for part in parts) > 20:
            continue  # a word wider than its cell may break anywhere: tested as never cut
        boxes = laptop.execute_script(
            "const r = document.createRange(); r.selectNodeContents(arguments[0]);"
            "return [...r.getClientRects()].filter(b => b.width > 0).map(b => Math.round(b.top))",
            cell,
        )
        assert len(boxes) == len(parts), (whole, boxes)  # no part broken inside a word
        if len(whole) <= 21:
            assert len(set(boxes)) == 1, (whole, boxes)  # one line
        checked += 1
    assert checked >= 10


def test_run_page_with_a_long_error_fits_and_shows_it_whole(laptop: Any, base_url: str) -> None:
    """At 1280 px the run page needs no sideways scrolling and shows the whole error."""
    from selenium.webdriver.common.by import By

    laptop.get(f"{base_url}/runs/{WIDE}")
    width, window = laptop.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= window, (width, window)
    assert LONG_ERROR in laptop.find_element(By.ID, "failure-error").text


def test_stats_page_shows_every_step_label_whole(laptop: Any, base_url: str) -> None:
    """On the stats page at 1280 px, every chart label (a 76-character step name among them)
    is shown whole: its text is the full label and nothing of it is cut off."""
    from selenium.webdriver.common.by import By

    laptop.get(base_url + "/stats?since=30d")
    labels = laptop.find_elements(By.CSS_SELECTOR, ".hchart .label")
    assert labels
    texts = [label.text for label in labels]
    assert any(LONG_STEP in text for text in texts), texts
    clipped = laptop.execute_script(
        "return Array.from(document.querySelectorAll('.hchart .label'))"
        ".filter(e => e.scrollWidth > e.clientWidth || e.scrollHeight > e.clientHeight)"
        ".map(e => e.textContent)"
    )
    assert clipped == []
    width, window = laptop.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= window, (width, window)


def test_error_types_show_short_with_the_full_type_on_hover(laptop: Any, base_url: str) -> None:
    """The stats and run pages show the error's class as the CLI does; the qualified type is
    its title."""
    from selenium.webdriver.common.by import By

    short = LONG_ERROR_TYPE.rsplit(".", 1)[-1]
    for path in (f"/runs/{WIDE}", "/stats?since=30d"):
        laptop.get(base_url + path)
        shown = laptop.find_elements(By.CSS_SELECTOR, f"[title='{LONG_ERROR_TYPE}']")
        assert shown, path
        assert all(element.text == short for element in shown), path
        assert LONG_ERROR_TYPE not in laptop.find_element(By.TAG_NAME, "main").text, path
