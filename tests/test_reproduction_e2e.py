"""Reproduction end to end on real runs: made by the harness, uploaded, verified, re-run in the sandbox.

- a tiny-books run re-run by the verify worker and shown reproduced, bitwise (the default suite's one
  sandboxed re-run);
- the same run with an edited loss curve, and with an inflated speed (its step events rescaled consistently
  on both clocks, which verification cannot tell), each ends disputed (slow);
- a second process registers as a runner machine, takes the job, and its result is accepted (slow);
- an open-division run (its own build_model): its model scored in the sandbox, then re-run from its source.tar
  and reproduced (slow);
- the real cpu-books track, fewer steps: reproduced, and both forgeries disputed (slow; prints the re-runs'
  wall times).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from harness import runner
from harness.submit import pack
from leaderboard.app import create_app
from leaderboard.models import Reproduction
from leaderboard.settings import Settings, TrackResources
from leaderboard.tokens import create_token
from leaderboard.verifier import verify_worker
from protocol.tracks import load_track
from sandbox import available
from submissions.scaffold import scaffold
from tests.conftest import PRETRAIN, REPO
from tests.leaderboard_fixtures import serve_in_thread
from tests.reproduction_fixtures import reproduce_table
from tests.test_harness import PRETRAIN_HASH, TINY_TRACK

needs_sandbox = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pretrain_dir):
    """One real run of a tiny-books track that the server re-runs, and its tokenizer (made once for the module)."""
    root = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEEDRUN_CACHE", str(root / "cache"))
        track_file = root / "tiny-books.toml"
        # a wide time band: on a shared test machine a tiny run's seconds may differ tenfold between two honest
        # runs (the forged speed below claims 1000x)
        track_file.write_text(
            TINY_TRACK.format(content_hash=PRETRAIN_HASH, data_dir=PRETRAIN, steps=6)
            + reproduce_table("server", time_ratio_max=100.0)
        )
        track = load_track(track_file)
        [run_dir] = runner.run(track, "baseline", seeds=[3], runs_dir=root / "runs")
        tokenizer_dir = next((root / "cache" / "tokenizers").glob(f"{track.name}-*"))
        yield SimpleNamespace(root=root, track_file=track_file, track=track, run_dir=run_dir, tokenizer=tokenizer_dir)


def server(tiny, directory: Path, **overrides) -> SimpleNamespace:
    directory.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        database_url=f"sqlite:///{directory / 'lb.db'}",
        storage_dir=directory / "storage",
        track_files=[tiny.track_file],
        track_resources={tiny.track.name: TrackResources(data_dir=PRETRAIN, tokenizer_dir=tiny.tokenizer)},
        **{"cache_ttl_s": 0.0, "retry_after_s": 0.0, **overrides},
    )
    client = TestClient(create_app(settings))
    return SimpleNamespace(client=client, settings=settings, token=create_token("carol", settings=settings))


def submit(srv, run_dir: Path) -> dict:
    r = srv.client.post(
        "/api/runs",
        headers={"Authorization": f"Bearer {srv.token}"},
        files={"bundle": ("bundle.tar.gz", pack(run_dir), "application/gzip")},
    )
    assert r.status_code == 201, r.text
    return r.json()


def rewrite_events(run_dir: Path, edit) -> None:
    path = run_dir / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(edit(e)) + "\n" for e in events))


def edited_losses(run_dir: Path, dest: Path) -> Path:
    """The same run with every step's loss lowered by 0.05 (nothing verification looks at)."""
    shutil.copytree(run_dir, dest, symlinks=True)

    def lower(e):
        if e["event"] == "step":
            e["loss"], e["smooth_loss"] = e["loss"] - 0.05, e["smooth_loss"] - 0.05
        return e

    rewrite_events(dest, lower)
    return dest


def inflated_speed(run_dir: Path, dest: Path, factor: float) -> Path:
    """The same run claiming `factor` of its seconds: every step's dt_s, both clocks' stamps (from the start),
    the running totals and the record's timing scaled alike, so that the events agree with each other and
    with the record on both clocks, as check_timing demands."""
    shutil.copytree(run_dir, dest, symlinks=True)
    events = [json.loads(line) for line in (dest / "events.jsonl").read_text().splitlines()]
    w0, r0 = events[0]["wall"], events[0]["runner_t"]

    def scale(e):
        e["wall"], e["runner_t"] = w0 + (e["wall"] - w0) * factor, r0 + (e["runner_t"] - r0) * factor
        for key in ("dt_s", "train_time_s", "seconds"):
            if isinstance(e.get(key), float):
                e[key] *= factor
        if e.get("tokens_per_s"):
            e["tokens_per_s"] /= factor
        return e

    rewrite_events(dest, scale)
    record = json.loads((dest / "record.json").read_text())
    timing = record["timing"]
    for key in ("train_time_s", "nanochat_time_s"):
        timing[key] *= factor
    timing["clock"]["runner_span_s"] *= factor
    timing["clock"]["saves_s"] *= factor
    record["throughput"]["tokens_per_s"] /= factor
    (dest / "record.json").write_text(json.dumps(record, indent=2))
    return dest


@needs_sandbox
def test_an_honest_run_is_reproduced_in_the_sandbox(tiny, tmp_path):
    srv = server(tiny, tmp_path)
    run_id = submit(srv, tiny.run_dir)["run_id"]
    page = srv.client.get(f"/runs/{run_id}").text
    assert "position 1 in the queue" in page  # the verification's
    assert verify_worker(once=True, settings=srv.settings, worker_id="e2e") == 2  # verified, then re-run
    run = srv.client.get(f"/api/runs/{run_id}").json()
    detail = run["reproduction_detail"]
    assert run["verification"] == "verified" and run["reproduction"] == "reproduced", detail
    e = detail["evidence"]
    # same seed, versions and threads on this CPU: bitwise the same run
    assert e["losses"]["max_abs_diff"] == 0 and e["steps"] == {"claimed": 6, "reproduced": 6}
    assert e["metric"]["abs_diff"] == 0 and e["weights"]["identical"], e
    assert e["time"]["judged"] and 0 < detail["time_ratio"] < 100 and detail["reproduced_by"].startswith("the server")
    page = srv.client.get(f"/runs/{run_id}").text
    assert 'id="reproduction-evidence"' in page and "identical" in page and "claimed and reproduced" in page
    [row] = srv.client.get(f"/api/tracks/{tiny.track.name}/leaderboard").json()
    assert row["n_reproduced"] == 1 and row["n_disputed"] == 0 and row["n_reproduce_needed"] == 1
    assert "reproduced 1" in srv.client.get(f"/tracks/{tiny.track.name}").text


@needs_sandbox
@pytest.mark.slow
@pytest.mark.parametrize("forgery", ["losses", "speed"])
def test_a_forged_run_that_verifies_is_disputed_by_its_rerun(tiny, tmp_path, forgery):
    if forgery == "losses":
        forged, why = edited_losses(tiny.run_dir, tmp_path / "forged"), "step 0's training loss"
    else:
        forged, why = inflated_speed(tiny.run_dir, tmp_path / "forged", 0.001), "the claimed speed is disputed"
    srv = server(tiny, tmp_path / "lb")
    run_id = submit(srv, forged)["run_id"]
    assert verify_worker(once=True, settings=srv.settings, worker_id="e2e") == 2
    run = srv.client.get(f"/api/runs/{run_id}").json()
    assert run["verification"] == "verified", run["verification_detail"]  # verification cannot tell
    detail = run["reproduction_detail"]
    assert run["reproduction"] == "disputed" and any(why in r for r in detail["reasons"]), detail["reasons"]
    if forgery == "speed":
        assert detail["time_ratio"] > 100 and detail["evidence"]["time"]["judged"]
    else:
        assert detail["evidence"]["losses"]["max_abs_diff"] == pytest.approx(0.05, abs=1e-6)
    page = srv.client.get(f"/runs/{run_id}").text
    assert 'class="badge disputed"' in page and why.split("'")[0] in page
    [row] = srv.client.get(f"/api/tracks/{tiny.track.name}/leaderboard").json()
    assert row["n_disputed"] == 1 and "disputed" in row["why_unranked"]


@needs_sandbox
@pytest.mark.slow
def test_an_open_run_is_reproduced_from_its_source_in_the_sandbox(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tiny.root / "cache"))  # the module's tokenizer
    track_file = tmp_path / "tiny-books.toml"
    track_file.write_text(
        tiny.track_file.read_text().replace("provisional = true", 'provisional = true\ndivisions = ["closed", "open"]')
    )
    track = load_track(track_file)
    sub = scaffold("open_baseline", tmp_path, open_division=True)
    [run_dir] = runner.run(track, str(sub), seeds=[3], runs_dir=tmp_path / "runs")
    srv = server(SimpleNamespace(**{**vars(tiny), "track_file": track_file, "track": track}), tmp_path / "lb")
    run_id = submit(srv, run_dir)["run_id"]
    assert verify_worker(once=True, settings=srv.settings, worker_id="e2e") == 2  # verified, then re-run
    run = srv.client.get(f"/api/runs/{run_id}").json()
    detail = run["reproduction_detail"]
    assert run["verification"] == "verified", run["verification_detail"]
    assert run["reproduction"] == "reproduced", detail
    e = detail["evidence"]
    assert e["losses"]["max_abs_diff"] == 0 and e["metric"]["abs_diff"] == 0 and e["weights"]["identical"], e
    [row] = srv.client.get(f"/api/tracks/{track.name}/leaderboard", params={"division": "open"}).json()
    assert row["division"] == "open" and row["n_reproduced"] == 1


@needs_sandbox
@pytest.mark.slow
def test_a_runner_process_takes_the_job_and_its_result_is_accepted(tiny, tmp_path):
    srv = server(tiny, tmp_path / "lb", reproduce_locally=False)  # the server's workers leave re-runs to runners
    run_id = submit(srv, tiny.run_dir)["run_id"]
    assert verify_worker(once=True, settings=srv.settings) == 1
    assert srv.client.get(f"/api/runs/{run_id}").json()["reproduction"] == "pending"
    runner_token = create_token("box", runner=True, settings=srv.settings)
    with serve_in_thread(srv.client.app) as url:
        env = {**os.environ, "PYTHONPATH": str(REPO), "SPEEDRUN_CACHE": str(tiny.root / "cache")}
        proc = subprocess.run(
            [sys.executable, "-m", "speedrun", "runner", "--server", url, "--token", runner_token, "--once",
             "--work-dir", str(tmp_path)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0 and "1 reproduction jobs done" in proc.stdout, proc.stdout + proc.stderr
    run = srv.client.get(f"/api/runs/{run_id}").json()
    detail = run["reproduction_detail"]
    assert run["reproduction"] == "reproduced", detail
    assert detail["reproduced_by"].startswith("runner ") and detail["evidence"]["weights"]["identical"]
    assert not list(tmp_path.glob("reproduce-*"))  # the runner cleaned its work dir
    with Session(srv.client.app.state.engine) as session:
        job = session.exec(select(Reproduction)).one()
        assert job.attempts == 1 and job.claimed_by.startswith("runner:")


# ------------------------------------------------------------------ the real cpu-books track

CPU_BOOKS_STEPS = 8


@needs_sandbox
@pytest.mark.slow
def test_cpu_books_run_is_reproduced_and_its_forgeries_disputed(tmp_path, pretrain_dir, monkeypatch):
    """cpu-books as it is (d4, 8192 tokens, 2 threads, its tolerances) but CPU_BOOKS_STEPS steps: one honest run,
    re-run by the verify worker in the sandbox; the same run with an edited loss curve, and claiming 50x its
    speed, each on a server of its own (one model, one run), end disputed. Prints the re-runs' wall times."""
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    track_file = tmp_path / "cpu-books.toml"
    text = load_track("cpu-books").path.read_text()
    # the band widened for a shared test machine, where honest speeds vary severalfold
    text = text.replace("num_iterations = 40", f"num_iterations = {CPU_BOOKS_STEPS}").replace(
        "time_ratio_max = 1.5", "time_ratio_max = 10.0"
    )
    track_file.write_text(text.replace('default_dir = "../shared/data/pretrain"', f'default_dir = "{PRETRAIN}"'))
    track = load_track(track_file)
    [run_dir] = runner.run(track, "baseline", seeds=[42], runs_dir=tmp_path / "runs")
    tokenizer = next((tmp_path / "cache" / "tokenizers").glob("cpu-books-*"))
    tiny = SimpleNamespace(track_file=track_file, track=track, tokenizer=tokenizer)
    cases = {
        "honest": (run_dir, "reproduced", None),
        "losses": (edited_losses(run_dir, tmp_path / "losses"), "disputed", "step 0's training loss"),
        "speed": (inflated_speed(run_dir, tmp_path / "speed", 0.02), "disputed", "the claimed speed is disputed"),
    }
    for name, (bundle_dir, outcome, why) in cases.items():
        srv = server(tiny, tmp_path / f"lb-{name}")
        run_id = submit(srv, bundle_dir)["run_id"]
        assert verify_worker(once=True, settings=srv.settings, worker_id=name) == 2
        run = srv.client.get(f"/api/runs/{run_id}").json()
        detail = run["reproduction_detail"]
        assert run["verification"] == "verified" and run["reproduction"] == outcome, (name, detail)
        assert why is None or any(why in r for r in detail["reasons"]), detail["reasons"]
        e = detail["evidence"]
        if name == "honest":
            assert e["losses"]["max_abs_diff"] == 0 and e["metric"]["abs_diff"] == 0 and e["weights"]["identical"]
        print(
            f"\ncpu-books {CPU_BOOKS_STEPS} steps, {name}: {outcome}; sandbox {detail['duration_s']:.1f} s, "
            f"timed {e['time']['reproduced_s']:.1f} s re-run vs {e['time']['claimed_s']:.1f} s claimed"
        )
