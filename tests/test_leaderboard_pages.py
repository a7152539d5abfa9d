"""The pages: in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium), and with
the HTTP client where what is checked is the HTML the server sends.

A leaderboard with three verified golden runs of alice's golden-sub, a rejected one of bob's, and bob's
other-sub (two slower runs, marked verified directly: the worker's checks are tested elsewhere); uvicorn serves
it on 127.0.0.1 for the browser, which checks that the board renders rows, the record chart draws, a run page
shows its loss and telemetry plots, and the compare page draws one curve per run or submission, one bar and one
error bar per submission, and the verdict. The browser tests skip when chromium/chromedriver are absent
(scripts/ci_services.sh installs them); the HTTP ones do not.
"""

import json
import re
import shutil
from pathlib import Path

import pytest

from leaderboard.compare import MAX_COMPARED
from leaderboard.verifier import verify_worker
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import Env, golden_bundles, make_env, upload  # noqa: F401 -- shared fixtures
from tests.test_leaderboard_trust import mark_verified

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
OTHER_DT_S = (0.55, 0.551)  # other-sub's step times: slower than golden-sub's 0.5 s, a little apart (a std > 0)
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def board(tmp_path_factory, golden_bundles) -> Env:  # noqa: F811
    tmp = tmp_path_factory.mktemp("site")
    env = make_env(tmp, f"sqlite:///{tmp / 'lb.db'}")
    for name in ("r0", "r1", "r2"):
        assert upload(env, golden_bundles[name], env.alice).status_code == 201
    assert upload(env, golden_bundles["metric"], env.bob).status_code == 201
    verify_worker(once=True, settings=env.settings)
    cache: dict = {}
    for i, dt_s in enumerate(OTHER_DT_S):
        paths = fixtures.make_bundle(
            tmp / f"o{i}", run_id=f"o{i}", seed=i, submission="other-sub", dt_s=dt_s, provenance_cache=cache
        )
        assert upload(env, paths, env.bob).status_code == 201
    mark_verified(env, "o0", "o1")
    return env


@pytest.fixture(scope="module")
def site(board):
    pytest.importorskip("uvicorn")
    with fixtures.serve_in_thread(board.client.app) as url:
        yield url


def submission_of(board: Env, run_id: str) -> int:
    return board.client.get(f"/api/runs/{run_id}").json()["submission_id"]


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
    assert len(rows) == 3
    ranked = browser.find_element(By.CSS_SELECTOR, "#board tr.ranked")
    assert "golden-sub" in ranked.text and "alice" in ranked.text and "verified" in ranked.text
    assert "other-sub" in rows[1].text and "rejected" in rows[2].text
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


# ------------------------------------------------------------------ the compare page


def polylines(browser, chart: str) -> list:
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, f'#curves svg[aria-label="{chart}"] polyline.series')


def test_compare_overlays_two_submissions_with_bars_and_the_verdict(board, site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    golden, other = submission_of(board, "r0"), submission_of(board, "o0")
    browser.get(f"{site}/compare?track=golden&submissions={golden},{other}")
    loss = polylines(browser, "training loss (smoothed)")
    # One mean curve per submission, over the 20 steps every one of its runs logged.
    labels = [f"golden-sub #{golden} (alice)", f"other-sub #{other} (bob)"]
    assert [line.get_attribute("data-label") for line in loss] == labels
    assert [len(line.get_attribute("points").split()) for line in loss] == [20, 20]
    assert all(drawn_length(browser, f'#curves polyline[data-label="{line.get_attribute("data-label")}"]') > 10
               for line in loss)  # fmt: skip
    assert len(polylines(browser, "val bpb")) == 2
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars rect.bar")
    errors = browser.find_elements(By.CSS_SELECTOR, "#bars line.error")
    assert len(bars) == 2 and len(errors) == 2
    assert bars[1].size["height"] > bars[0].size["height"] > 50  # other-sub is slower: a taller bar
    assert float(errors[1].get_attribute("data-std")) > 0
    [verdict] = browser.find_elements(By.CSS_SELECTOR, "#verdicts p.verdict")
    # The times decide (both meet the target); the metric alone says better (the worker's recomputed val bpb of
    # golden-sub is 4e-7 above the claimed value other-sub was marked verified with, both sides constant).
    assert verdict.get_attribute("data-verdict") == "worse"
    assert f"other-sub #{other} (bob) against golden-sub #{golden} (alice): worse" in verdict.text
    assert "timed seconds: 10.2 -> 11.23 s" in browser.find_element(By.CSS_SELECTOR, "#verdicts pre").text
    browser.save_screenshot(str(tmp_path / "compare.png"))


def test_compare_draws_one_curve_per_run_named_and_bars_per_submission(site, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/compare?runs=r0,r1,o0,o1")
    assert [line.get_attribute("data-label") for line in polylines(browser, "training loss (smoothed)")] == [
        "r0",
        "r1",
        "o0",
        "o1",
    ]
    val = browser.find_element(By.CSS_SELECTOR, '#curves svg[aria-label="val bpb"]')
    assert val.get_attribute("data-series") == "4" and val.get_attribute("data-points") == "4"  # one eval each
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars rect.bar")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#bars line.error")) == 2
    assert browser.find_element(By.CSS_SELECTOR, "#verdicts p.verdict").get_attribute("data-verdict") == "worse"
    browser.get(f"{site}/compare?runs=r0,nope")
    assert browser.find_element(By.ID, "error").text == "no run 'nope'"


def test_bad_compare_links_get_a_one_line_page_with_a_4xx(board):
    golden = submission_of(board, "r0")
    too_many = ",".join(f"r{i}" for i in range(MAX_COMPARED + 1))
    for path, reason in {
        "/compare?runs=r0,nope": "no run 'nope'",
        f"/compare?runs={too_many}": f"too many runs named: compare at most {MAX_COMPARED}",
        "/compare?track=golden&submissions=" + "&submissions=".join(map(str, range(1000))): "too many submissions",
        "/compare": "name either runs or submissions to compare",
        f"/compare?runs=r0&track=golden&submissions={golden}": "name either runs or submissions to compare",
        f"/compare?submissions={golden}": "name the track of the submissions",
        f"/compare?track=nope&submissions={golden}": "no track 'nope'",
        "/compare?track=golden&submissions=999": "no submission '999'",
        "/compare?track=golden&submissions=x1": "no submission 'x1'",
        f"/compare?track=cpu&submissions={golden}": f"submission {golden} (golden-sub) has no runs on cpu",
    }.items():
        r = board.client.get(path, headers=HTML)
        assert r.status_code == 422 and r.headers["content-type"].startswith("text/html"), path
        [line] = re.findall(r'<p id="error">(.*?)</p>', r.text, re.S)
        assert reason.replace("'", "&#39;") in line and "\n" not in line, (path, line)
    assert board.client.get("/compare?runs=r0,nope").json() == {"detail": "no run 'nope'"}  # not a browser: JSON
    assert board.client.get("/api/runs/nope", headers=HTML).json() == {"detail": "no run 'nope'"}  # the API: JSON


def test_a_mean_curve_averages_runs_thinned_differently_over_the_steps_they_share():
    from leaderboard.compare import mean_curve

    assert mean_curve([[(0, 1.0), (2, 3.0), (4, 5.0)], [(0, 3.0), (1, 3.0), (2, 5.0)]]) == [(0, 2.0), (2, 4.0)]
    assert mean_curve([[], [(0, 1.0)]]) == [(0, 1.0)] and mean_curve([]) == []


# ------------------------------------------------------------------ the board, run and submission pages (HTTP)


def header(page: str, table_id: str) -> list[str]:
    thead = re.search(rf'<table id="{table_id}">.*?<thead>(.*?)</thead>', page, re.S).group(1)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<th[^>]*>(.*?)</th>", thead, re.S)]


def chart_titles(page: str, div_id: str) -> list[str]:
    div = re.search(rf'<div class="charts" id="{div_id}">(.*?)</div>', page, re.S)
    return re.findall(r'<svg class="chart" role="img" aria-label="([^"]+)"', div.group(1)) if div else []


def test_tracks_without_a_target_say_so_instead_of_a_threshold_of_zero(board):
    from protocol.tracks import list_tracks

    index = board.client.get("/").text
    shown = dict(re.findall(r'<a href="/tracks/([^"]+)">.*?<td class="target">([^<]*)</td>', index, re.S))
    unset = [t.name for t in list_tracks() if t.kind == "time_to_target" and not t.target.threshold]
    assert unset and all(shown[name] == "val_bpb: target not set" for name in unset), shown
    assert shown["golden"] == "val_bpb &lt; 7" and shown["cpu-5min"] == "best val_bpb in 300 s"
    assert not [target for target in shown.values() if re.fullmatch(r"\w+ (&lt;|&gt;) 0(\.0)?", target)]  # no zero
    assert '<span id="target">val_bpb: target not set</span>' in board.client.get(f"/tracks/{unset[0]}").text
    assert '<span id="target">val_bpb &lt; 7</span>' in board.client.get("/runs/r0").text


def test_the_board_has_one_metric_column_and_the_columns_of_its_track_kind(board):
    page = board.client.get("/tracks/golden").text
    ends = ["energy (kWh)", "cost ($)", "date", "status", "curves"]
    columns = header(page, "board")
    assert columns == ["cmp", "#", "submission", "submitter", "time (s) mean ± std", "val_bpb", "p", "n", *ends]
    for row in re.findall(r'<tr class="board-row.*?</tr>', page, re.S):
        assert len(re.findall(r"<td[ >]", row)) == len(columns)
    budget = header(board.client.get("/tracks/cpu-5min").text, "board")
    assert budget == ["cmp", "#", "submission", "submitter", "val_bpb mean ± std", "p", "n", *ends]
    gpu = header(board.client.get("/tracks/gpt2").text, "board")  # a GPU track: MFU means something there
    assert gpu == ["cmp", "#", "submission", "submitter", "time (s) mean ± std", "core", "p", "n", *ends[:2],
                   "MFU (%)", *ends[2:]]  # fmt: skip


def test_dates_are_one_day_wide_with_the_time_in_the_title(board):
    from datetime import datetime

    page = board.client.get("/tracks/golden").text
    cells = re.findall(r'<td class="date">(.*?)</td>', page)
    assert len(cells) == 3 + 1 + 6  # the board's rows, the record, the latest runs
    dates = [re.fullmatch(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>', c) for c in cells if c != "–"]
    assert len(dates) == 2 + 1 + 6  # the rejected submission has no verified run to date
    for iso, title, day in (d.groups() for d in dates):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", day) and title == f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M} UTC"
        assert title.startswith(day)


def test_each_board_row_links_to_its_runs_curves_and_to_the_record(board):
    golden, other, rejected = (submission_of(board, run) for run in ("r0", "o0", "t-metric"))
    page = board.client.get("/tracks/golden").text
    rows = re.findall(r'<tr class="board-row.*?</tr>', page, re.S)
    for row, submission in zip(rows, (golden, other, rejected), strict=True):
        assert f'<a class="curves" href="/compare?track=golden&amp;submissions={submission}">' in row
    vs = [re.findall(r'<a class="vs-record" href="([^"]+)"', row) for row in rows]
    assert vs == [[], [f"/compare?track=golden&amp;submissions={golden},{other}"],
                  [f"/compare?track=golden&amp;submissions={golden},{rejected}"]]  # fmt: skip
    runs = board.client.get(f"/compare?track=golden&submissions={golden}").text
    loss = re.search(r'<svg class="chart" role="img" aria-label="training loss \(smoothed\)".*?</svg>', runs).group(0)
    assert re.findall(r'<polyline class="series" data-label="([^"]+)"', loss) == ["r0", "r1", "r2"]
    # A submission with nothing verified: its runs' curves all the same, and no bar (nothing counts).
    pending = board.client.get(f"/compare?track=golden&submissions={rejected}").text
    assert chart_titles(pending, "curves") == ["training loss (smoothed)", "val bpb"]
    assert 'data-series="1"' in pending and 'data-bars="0"' in pending
    submission = board.client.get(f"/submissions/{golden}").text
    assert f'<a class="curves" href="/compare?track=golden&amp;submissions={golden}">' in submission


def as_gpu_run(paths: dict[str, Path], tmp: Path) -> dict[str, Path]:
    """The bundle as a one-GPU run writes it: NVML samples in its telemetry, the GPU in its environment, an MFU."""
    record = json.loads(paths["record.json"].read_text())
    record["provenance"]["environment"] |= {"gpu_count": 1, "gpus": [{"name": "NVIDIA H100 80GB HBM3"}]}
    record["throughput"]["mfu"] = 41.5
    lines = [json.loads(line) for line in paths["telemetry.jsonl"].read_text().splitlines()]
    lines[0] |= {"backend": "nvml", "nvml_error": None}
    for i, line in enumerate(lines[1:]):
        line["gpus"] = [{"index": 0, "power_w": 600.0 + i, "utilization_pct": 97.0, "memory_used_bytes": 60 * 2**30}]
    out = dict(paths) | {"record.json": tmp / "record.json", "telemetry.jsonl": tmp / "telemetry.jsonl"}
    out["record.json"].write_text(json.dumps(record))
    out["telemetry.jsonl"].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def without_rapl(paths: dict[str, Path], tmp: Path) -> dict[str, Path]:
    """The bundle as a CPU run without RAPL writes it (a container, a VM): no package energy in the samples."""
    lines = [json.loads(line) for line in paths["telemetry.jsonl"].read_text().splitlines()]
    lines[0]["rapl_error"] = "no /sys/class/powercap"
    for line in lines[1:]:
        line["cpu"]["rapl_energy_j"] = None
    out = dict(paths) | {"telemetry.jsonl": tmp / "telemetry.jsonl"}
    out["telemetry.jsonl"].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def test_a_run_page_shows_only_the_panels_its_hardware_has(tmp_path, golden_bundles):  # noqa: F811
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")
    cache: dict = {}
    gpu = fixtures.make_bundle(tmp_path / "g", run_id="g0", seed=0, provenance_cache=cache)
    cpu = fixtures.make_bundle(tmp_path / "c", run_id="c0", seed=1, provenance_cache=cache)
    (tmp_path / "g-edit").mkdir(), (tmp_path / "c-edit").mkdir()
    assert upload(env, as_gpu_run(gpu, tmp_path / "g-edit"), env.alice).status_code == 201
    assert upload(env, without_rapl(cpu, tmp_path / "c-edit"), env.alice).status_code == 201
    assert upload(env, golden_bundles["r1"], env.alice).status_code == 201

    page = env.client.get("/runs/g0").text
    assert chart_titles(page, "telemetry") == [
        "GPU power (sum, W)",
        "GPU utilization (mean, %)",
        "GPU memory (sum, GiB)",
    ]
    assert re.search(r'<tr id="mfu"><td>steps · tokens/s · MFU \(%\)</td><td class="num">20 · 32768 · 41.5</td>', page)
    page = env.client.get("/runs/c0").text  # no RAPL: no power chart, rather than an empty box
    assert chart_titles(page, "telemetry") == ["CPU utilization (%)", "process memory (RSS, GiB)"]
    assert "no data" not in page and "MFU" not in page and "GPU" not in page
    page = env.client.get("/runs/r1").text  # the fixture claims an MFU of 1.5 on a CPU: meaningless, not shown
    assert chart_titles(page, "telemetry") == [
        "CPU package power (RAPL, W)",
        "CPU utilization (%)",
        "process memory (RSS, GiB)",
    ]
    assert "MFU" not in page and "GPU" not in page
