"""The Flask example's page in a real headless browser (Debian's chromium, via selenium).

Everything runs over real loopback HTTP: the app (werkzeug), the fake generator backend,
and its signed webhooks back to the app. A user types a prompt, clicks Generate, and
watches the progress bar move and the job reach ``succeeded`` with its picture, kept by
the app (it still loads once the backend's copy is gone), and a notification, all pushed
to the page as Server-Sent Events, without a reload.

Skipped, with the reason shown, when chromium or chromedriver is not installed; in CI
(``CI`` set) their absence fails instead (``.ci/system-deps`` installs them).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobhook import SQLJobStore
from jobhook.outputs import FetchPolicy
from jobhook.testing import FakeGenerator, Scripts, Submission, new_webhook_secret

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    message = f"the browser test needs {what}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (run .ci/system-deps)")
    pytest.skip(message)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    """A headless Debian chromium with a fresh profile, driven by selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (pip install selenium)")
    browser = _find("chromium", "chromium-browser")
    driver = _find("chromedriver")
    if browser is None or driver is None:
        _missing("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    # An explicit driver path: selenium never looks for (or downloads) one of its own.
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    session.set_page_load_timeout(30)
    yield session
    session.quit()


@pytest.fixture
def fake() -> Iterator[tuple[FakeGenerator, str]]:
    """A fake backend making pictures it serves itself (once its URL is known)."""
    served: dict[str, str] = {}

    def pictures(submission: Submission) -> Any:
        return Scripts.pictures(served["url"], progress=(20.0, 50.0, 80.0))(submission)

    generator = FakeGenerator(
        new_webhook_secret(), script=pictures, delivery="background", step_interval=0.5
    )
    with generator, generator.serve() as url:
        served["url"] = url
        yield generator, url


@pytest.fixture
def flask_app_url(tmp_path: Path, fake: tuple[FakeGenerator, str]) -> Iterator[str]:
    """The Flask example served on loopback, wired to a fake backend on loopback; it
    keeps the pictures in a directory of its own."""
    pytest.importorskip("flask")
    from examples.flask_app.app import create_app
    from werkzeug.serving import make_server

    store = SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    holder: dict[str, Any] = {}
    server = make_server(
        "127.0.0.1", 0, lambda env, start: holder["app"](env, start), threaded=True
    )
    app_url = f"http://127.0.0.1:{server.server_port}"
    generator, backend_url = fake
    with httpx.Client() as http:
        holder["app"] = create_app(
            store,
            backend_url=backend_url,
            app_url=app_url,
            secret=str(generator.secret),
            backend_http=http,
            files_dir=tmp_path / "files",
            # The fake serves its pictures on loopback: allowed here, refused by default.
            fetch_policy=FetchPolicy(allow_networks=["127.0.0.0/8"]),
        )
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield app_url
        finally:
            server.shutdown()
            thread.join()
            holder["app"].extensions["jobhook_keeper_stop"].set()
    store.close()


RECORD_PROGRESS = """
window.notReloaded = true;
window.progressSeen = [];
const bar = document.querySelector("#generations tr progress");
new MutationObserver(() => window.progressSeen.push(bar.getAttribute("value")))
    .observe(bar, {attributes: true, attributeFilter: ["value"]});
"""


def test_a_user_submits_a_prompt_and_sees_the_image_arrive(
    chrome: Any, flask_app_url: str, fake: tuple[FakeGenerator, str]
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(f"{flask_app_url}/generate-images")
    assert chrome.title == "Generate images"
    chrome.find_element(By.ID, "prompt").send_keys("a red fox in fresh snow")
    chrome.find_element(By.ID, "generate").click()
    # The form posts and redirects to the page, which now has the job's row: from here
    # on, a marker set on the page shows that it is never reloaded, and an observer
    # records every value the progress bar takes.
    WebDriverWait(chrome, 30, poll_frequency=0.1).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#generations tr progress")
    )
    chrome.execute_script(RECORD_PROGRESS)

    def finished_row(driver: Any) -> Any:
        # Read a row in one go, and look again if it was replaced under us.
        try:
            for row in driver.find_elements(By.CSS_SELECTOR, "#generations tr"):
                if row.find_element(By.CLASS_NAME, "status").text == "succeeded":
                    return {
                        "job_id": row.get_attribute("data-job-id"),
                        "prompt": row.find_element(By.TAG_NAME, "td").text,
                        "href": row.find_element(By.CSS_SELECTOR, "a.image").get_attribute("href"),
                        "src": row.find_element(By.CSS_SELECTOR, "img.picture").get_attribute(
                            "src"
                        ),
                        "progress": row.find_element(By.TAG_NAME, "progress").get_attribute(
                            "value"
                        ),
                    }
        except StaleElementReferenceException:
            return False
        return False

    row = WebDriverWait(chrome, 30, poll_frequency=0.2).until(finished_row)
    assert row["prompt"] == "a red fox in fresh snow"
    # The page shows the app's kept copy, not the backend's URL.
    assert row["href"] == f"{flask_app_url}/files/{row['job_id']}/0.png"
    assert row["src"] == row["href"]
    assert row["progress"] == "100"
    assert chrome.execute_script("return window.notReloaded") is True
    seen = [float(v) for v in chrome.execute_script("return window.progressSeen")]
    assert any(0 < value < 100 for value in seen), seen
    assert seen[-1] == 100
    # The backend's copy goes away; the kept picture still loads in the browser.
    generator, backend_url = fake
    generator.expire_files()
    assert httpx.get(f"{backend_url}/files/{row['job_id']}/1.png").status_code == 404
    chrome.get(f"{flask_app_url}/generate-images")
    loaded = WebDriverWait(chrome, 10, poll_frequency=0.2).until(
        lambda driver: driver.execute_script(
            "const img = document.querySelector('img.picture');"
            "return img && img.complete && img.naturalWidth;"
        )
    )
    assert loaded == 64  # the fake's 64x64 PNG, decoded by the browser

    def notification_texts(driver: Any) -> Any:
        try:
            return [n.text for n in driver.find_elements(By.CSS_SELECTOR, "#notifications li")]
        except StaleElementReferenceException:
            return False

    notifications = WebDriverWait(chrome, 10, poll_frequency=0.2).until(notification_texts)
    assert notifications == ["Your image “a red fox in fresh snow” is ready."]
