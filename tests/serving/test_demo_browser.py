"""The demo page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven with Selenium) loads `/` from the session app, types a query, clicks, waits for the page to
say it is done, checks both result lists in the DOM and saves a screenshot.

Skipped when Chromium is not installed; `.ci/run` installs it, so CI always runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tiny_training import GROUPS

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does this)")

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900", "--lang=zh-CN"]


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")      # a new, empty profile
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium never runs its driver manager (which would try to download).
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_demo_page_in_headless_chromium(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    query = GROUPS[0][0]
    browser.get(f"{app_url}/")
    assert browser.title == "bert4ray demo"
    box = browser.find_element(By.ID, "query")
    box.send_keys(query)
    assert box.get_attribute("value") == query
    browser.find_element(By.ID, "both-btn").click()
    WebDriverWait(browser, 60, poll_frequency=0.2).until(
        lambda d: d.execute_script("return document.body.dataset.done") == "1")

    def rows(list_id: str) -> list[tuple[str, str]]:
        """(text, score) of each result row, read from the DOM: <li>text<span class=score>…</span></li>."""
        found = browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(li => [li.className, "
            "li.firstChild.textContent, li.querySelector('.score') && li.querySelector('.score').textContent])",
            f"#{list_id} > li")
        assert all(cls != "error" for cls, _, _ in found), found
        return [(text, score) for _, text, score in found]

    search = rows("search-results")
    similar = rows("similar-results")
    assert len(search) == 8
    assert search[0] == (query, "1.000")                          # the query itself is in the index
    assert all(t in GROUPS[0] for t, _ in search[:3])          # then its paraphrases
    assert 1 <= len(similar) <= 8 and all(t and t != query for t, _ in similar)
    scores = [float(s) for _, s in similar]
    assert scores == sorted(scores, reverse=True)
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("done in ")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors

    shot = tmp_path / "demo-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\ndemo page: {len(similar)} paraphrases, {len(search)} neighbours, {status}; screenshot {shot}")
