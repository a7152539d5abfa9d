"""The pages in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

A uvicorn server on 127.0.0.1 serves a leaderboard with three verified golden runs and a rejected
one; the browser checks that the board renders rows, the record chart draws, and a run page shows
its loss and telemetry plots. Skips when chromium/chromedriver are absent (scripts/ci_services.sh
installs them).
"""

import shutil
from pathlib import Path

import pytest

from leaderboard.verifier import verify_worker
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import golden_bundles, make_env, upload  # noqa: F401 -- shared fixtures

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def site(tmp_path_factory, golden_bundles):  # noqa: F811
    pytest.importorskip("uvicorn")
    tmp = tmp_path_factory.mktemp("site")
    env = make_env(tmp, f"sqlite:///{tmp / 'lb.db'}")
    for name in ("r0", "r1", "r2"):
        assert upload(env, golden_bundles[name], env.alice).status_code == 201
    assert upload(env, golden_bundles["metric"], env.bob).status_code == 201
    verify_worker(once=True, settings=env.settings)
    with fixtures.serve_in_thread(env.client.app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed: run `bash scripts/ci_services.sh`")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1600",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def drawn_length(browser, selector: str) -> float:
    """The on-screen length of the first polyline under `selector`: > 0 only if the browser drew it."""
    return browser.execute_script(
        "const p = document.querySelector(arguments[0]); return p ? p.getTotalLength() : 0;", selector
    )


def test_the_board_renders_rows_and_the_record_chart_draws(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "/")
    assert browser.find_elements(By.CSS_SELECTOR, "#tracks tr.track-row")
    browser.find_element(By.LINK_TEXT, "golden").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#board tr.board-row")
    assert len(rows) == 2
    ranked = browser.find_element(By.CSS_SELECTOR, "#board tr.ranked")
    assert "golden-sub" in ranked.text and "alice" in ranked.text and "verified" in ranked.text
    assert "rejected" in rows[1].text
    chart = browser.find_element(By.CSS_SELECTOR, "#progression svg.chart")
    assert chart.size["width"] > 300 and chart.size["height"] > 100
    assert drawn_length(browser, "#progression polyline.series") > 10
    browser.save_screenshot(str(tmp_path / "board.png"))


def test_a_run_page_shows_its_plots_checks_and_files(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(site + "/runs/r1")
    assert browser.find_element(By.ID, "verification").text == "verified"
    assert drawn_length(browser, "#loss polyline.series") > 10
    telemetry = browser.find_elements(By.CSS_SELECTOR, "#telemetry svg.chart")
    titles = [t.get_attribute("aria-label") for t in telemetry]
    assert (
        any("power" in t for t in titles)
        and any("utilization" in t for t in titles)
        and any("memory" in t for t in titles)
    )
    for i in range(1, 4):
        assert drawn_length(browser, f"#telemetry svg.chart:nth-of-type({i}) polyline.series") > 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#checks tr.check-row")) == 9  # heldout: skip here
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#files a")]
    assert any(link.endswith("/api/runs/r1/files/train.log") for link in links)
    browser.save_screenshot(str(tmp_path / "run.png"))
    browser.get(site + "/runs/t-metric")
    assert "claimed 5.9" in browser.find_element(By.ID, "reasons").text
    Path(tmp_path / "rejected.png").write_bytes(browser.get_screenshot_as_png())
