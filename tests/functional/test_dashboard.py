"""The dashboard (``/dashboard``) in a real headless Chromium (Debian's, driven by Selenium
through its chromedriver): sign in, see a sandbox made through the SDK appear without a reload,
open it, browse and download a file, kill it and see it go; a key sees only its own
sandboxes; the page holds no secret. With FIREBOX_SCREENSHOTS set to a directory, the run
saves the screenshots the README shows."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from firebox import Sandbox
from tests.conftest import Daemon

pytestmark = pytest.mark.daemon_only
WAIT = 60.0


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        pytest.skip("no chromium and chromedriver (scripts/setup --test installs Debian's)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800"):
        options.add_argument(arg)  # --no-sandbox: Chromium's own sandbox cannot run as root
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()  # stops the chromedriver it started, by its pid


def _until(what: str, probe: Any) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception:  # the page is still changing under us
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def _shot(browser: Any, name: str) -> None:
    where = os.environ.get("FIREBOX_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(where) / f"dashboard-{name}.png"))


def test_a_key_signs_in_watches_opens_downloads_and_kills(daemon: Daemon, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    key = daemon.new_key("dashboard")
    other = Sandbox.create(timeout=600)  # the admin key's: never in this key's list
    try:
        page = httpx.get(f"{daemon.url}/dashboard").text
        assert key not in page and daemon.key not in page and "e2b_" not in page

        browser.get(f"{daemon.url}/dashboard")
        field = browser.find_element(By.ID, "key")
        assert browser.find_element(By.CSS_SELECTOR, "label[for=key]").text == "API key"
        field.send_keys(key)
        browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
        _until("the list shown", lambda: browser.find_element(By.ID, "sandboxes").is_displayed())
        assert key not in browser.page_source

        sbx = Sandbox.create(timeout=600, api_key=key, metadata={"who": "dashboard-test"})
        sbx.files.write("/home/user/report.txt", "forty-two\n")
        sbx.commands.run("echo logged-command")
        sbx.run_code("noted = 'logged-cell'")
        with daemon.client(key) as c:  # the API's log of it, which the page shows
            kinds = [
                (e["kind"], e["text"])
                for e in c.get(f"/sandboxes/{sbx.sandbox_id}/activity").json()
            ]
        assert kinds == [("command", "echo logged-command"), ("cell", "noted = 'logged-cell'")]
        row = _until(
            "the new sandbox in the list, without a reload",
            lambda: browser.find_element(By.CSS_SELECTOR, f"tr[data-id='{sbx.sandbox_id}']"),
        )
        assert "running" in row.text
        assert not browser.find_elements(By.CSS_SELECTOR, f"tr[data-id='{other.sandbox_id}']")
        _shot(browser, "sandboxes")

        row.find_element(By.TAG_NAME, "a").click()
        _until(
            "its details", lambda: "dashboard-test" in browser.find_element(By.ID, "details").text
        )
        shown = browser.find_element(By.ID, "activity").text
        assert "command (user): echo logged-command" in shown, shown
        assert "cell: noted = 'logged-cell'" in shown, shown
        button = _until(
            "the file in its browser",
            lambda: browser.find_element(
                By.CSS_SELECTOR, "button[aria-label='download report.txt']"
            ),
        )
        _shot(browser, "sandbox")
        button.click()
        saved = browser.downloads / "report.txt"
        _until("the download", lambda: saved.exists() and saved.read_text() == "forty-two\n")

        local = browser.downloads.parent / "from-the-browser.txt"
        local.write_text("uploaded through the dashboard\n")
        browser.find_element(By.ID, "upload").send_keys(str(local))
        browser.find_element(By.CSS_SELECTOR, "#upload-form button[type=submit]").click()
        _until(
            "the uploaded file listed",
            lambda: browser.find_elements(
                By.CSS_SELECTOR, "button[aria-label='download from-the-browser.txt']"
            ),
        )
        uploaded = sbx.files.read("/home/user/from-the-browser.txt")
        assert uploaded == "uploaded through the dashboard\n"

        browser.find_element(By.ID, "open-terminal").click()
        keys = _until(
            "the terminal", lambda: browser.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
        )
        screen = browser.find_element(By.CSS_SELECTOR, ".xterm-rows")
        _until("its prompt", lambda: ":~$" in screen.text)
        keys.send_keys("echo typed-$((6*7)) in $(tput cols) columns\n")
        _until("the command's output in the terminal", lambda: "typed-42 in" in screen.text)
        browser.execute_script("arguments[0].scrollIntoView()", screen)
        _shot(browser, "terminal")

        browser.find_element(By.ID, "kill").click()
        _until("back to the list", lambda: browser.find_element(By.ID, "sandboxes").is_displayed())
        _until(
            "the killed sandbox gone from the list",
            lambda: not browser.find_elements(By.CSS_SELECTOR, f"tr[data-id='{sbx.sandbox_id}']"),
        )
        with pytest.raises(Exception):  # noqa: B017 (the SDK's not-found, whichever class)
            Sandbox.get_info(sbx.sandbox_id, api_key=key)

        browser.get(f"{daemon.url}/dashboard#/host")
        _until(
            "the host page", lambda: "backend" in browser.find_element(By.ID, "host-details").text
        )
        _shot(browser, "host")
    finally:
        other.kill()


def test_the_admin_makes_and_revokes_keys_and_sees_templates(daemon: Daemon, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{daemon.url}/dashboard")
    browser.find_element(By.ID, "key").send_keys(daemon.key)
    browser.find_element(By.CSS_SELECTOR, "#sign-in button[type=submit]").click()
    _until("the list", lambda: browser.find_element(By.ID, "sandboxes").is_displayed())

    browser.get(f"{daemon.url}/dashboard#/templates")
    rows = browser.find_element(By.ID, "template-rows")
    _until("firebox's own template listed", lambda: "python" in rows.text)

    browser.get(f"{daemon.url}/dashboard#/keys")
    browser.find_element(By.ID, "key-name").send_keys("from-the-dashboard")
    browser.find_element(By.CSS_SELECTOR, "#new-key button[type=submit]").click()
    made = browser.find_element(By.ID, "key-made")
    _until("the new key shown once", lambda: "created from-the-dashboard: e2b_" in made.text)
    new = made.text.split(": ", 1)[1].split()[0]
    sbx = Sandbox.create(timeout=600, api_key=new)  # the new key works
    _shot(browser, "keys")
    browser.get(f"{daemon.url}/dashboard#/")  # the admin sees it, not into it
    theirs = _until(
        "the other key's sandbox in the admin's list",
        lambda: browser.find_element(By.CSS_SELECTOR, f"tr[data-id='{sbx.sandbox_id}']"),
    )
    assert "(another key's)" in theirs.text and not theirs.find_elements(By.TAG_NAME, "a")
    browser.get(f"{daemon.url}/dashboard#/keys")

    revoke = _until(
        "its revoke button",
        lambda: browser.find_element(
            By.CSS_SELECTOR, "button[aria-label='revoke from-the-dashboard']"
        ),
    )
    revoke.click()
    browser.switch_to.alert.accept()
    _until("revoked", lambda: "revoked" in browser.find_element(By.ID, "key-rows").text)
    r = httpx.get(f"{daemon.url}/sandboxes", headers={"X-API-Key": new})
    assert r.status_code == 401  # it opens nothing now
    with daemon.client() as c:  # and its sandbox, nobody's any more, is gone
        assert sbx.sandbox_id not in [s["sandbox_id"] for s in c.get("/sandboxes").json()]
    with daemon.client(daemon.new_key("plain")) as c:
        assert c.get("/keys").status_code == 403
        assert c.delete("/keys/key_0000000000000000").status_code == 403
