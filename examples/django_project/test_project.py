"""The Django example project: its own test suite under Django's test runner, its
migrations, and its admin pages in headless chromium (the docs' screenshots).

Run with ``JOBHOOK_UPDATE_SCREENSHOTS=1`` to write the screenshots into ``docs/images``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("django")

HERE = Path(__file__).resolve().parent
DOCS_IMAGES = HERE.parent.parent / "docs" / "images"


def manage(*args: str, db: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EXAMPLE_DATABASE": str(db),
        "JOBHOOK_FILES_DIR": str(db.parent / "files"),
        "DJANGO_SUPERUSER_PASSWORD": "pw",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_the_projects_own_tests_pass_under_djangos_runner(tmp_path: Path) -> None:
    done = manage("test", "gallery", "--noinput", db=tmp_path / "db.sqlite3")
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stderr


def test_migrations_are_complete_and_apply_from_empty(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    check = manage("makemigrations", "--check", "--dry-run", db=db)
    assert check.returncode == 0, check.stdout + check.stderr
    migrate = manage("migrate", "--noinput", db=db)
    assert migrate.returncode == 0, migrate.stderr
    assert "Applying jobhook.0001_initial... OK" in migrate.stdout
    assert "Applying jobhook.0002_output_keeps... OK" in migrate.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The project, migrated and seeded, served by ``runserver`` on loopback."""
    db = tmp_path / "db.sqlite3"
    for args in (
        ("migrate", "--noinput"),
        ("createsuperuser", "--noinput", "--username=admin", "--email=admin@example.com"),
        ("seed_demo",),
    ):
        done = manage(*args, db=db)
        assert done.returncode == 0, done.stderr
    port = _free_port()
    env = {**os.environ, "EXAMPLE_DATABASE": str(db), "JOBHOOK_FILES_DIR": str(tmp_path / "files")}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/admin/login/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_admin_pages_in_a_browser(served: str, tmp_path: Path) -> None:

    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from tests.test_browser import CHROME_FLAGS, _find, _missing

    browser, driver_path = _find("chromium", "chromium-browser"), _find("chromedriver")
    if browser is None or driver_path is None:
        _missing("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in [
        *CHROME_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1440,810",
    ]:
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    out = DOCS_IMAGES if os.environ.get("JOBHOOK_UPDATE_SCREENSHOTS") else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    try:
        session.get(f"{served}/admin/login/?next=/admin/jobhook/job/")
        session.find_element(By.NAME, "username").send_keys("admin")
        session.find_element(By.NAME, "password").send_keys("pw")
        session.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        from selenium.webdriver.support.ui import WebDriverWait

        # The click navigates: wait for the job list rather than read the login page.
        rows = WebDriverWait(session, 30, poll_frequency=0.2).until(
            lambda driver: driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        )
        assert len(rows) == 5
        assert "nsfw" in session.page_source
        assert session.save_screenshot(str(out / "django-admin-jobs.png"))

        session.get(f"{served}/admin/jobhook/deadletter/")
        assert "unknown-job" in session.page_source
        assert session.save_screenshot(str(out / "django-admin-dead-letters.png"))
    finally:
        session.quit()
    assert (out / "django-admin-jobs.png").stat().st_size > 10_000
