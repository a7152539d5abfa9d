"""End to end: real CPU runs from the harness are packed, uploaded, verified by the worker, and ranked."""

import pytest

pytest.importorskip("fastapi")

import requests  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

import speedrun  # noqa: E402
from harness import runner  # noqa: E402
from harness.submit import SubmitError, pack, register_campaign  # noqa: E402
from leaderboard.app import create_app  # noqa: E402
from leaderboard.db import get_engine  # noqa: E402
from leaderboard.models import Registration  # noqa: E402
from leaderboard.settings import Settings, TrackResources  # noqa: E402
from leaderboard.tokens import create_token  # noqa: E402
from leaderboard.verifier import verify_worker  # noqa: E402
from protocol.paths import cache_root  # noqa: E402
from protocol.record import read_record  # noqa: E402
from protocol.tracks import load_track  # noqa: E402
from tests.conftest import PRETRAIN  # noqa: E402
from tests.leaderboard_fixtures import serve_in_thread  # noqa: E402
from tests.test_harness import cache, write_track  # noqa: E402, F401 -- the tokenizer cache fixture


@pytest.mark.slow  # ~45 s; the default suite keeps `speedrun run --server`'s real runs through the worker
def test_real_runs_verify_with_their_claimed_numbers_and_rank(tmp_path):
    track_file = write_track(tmp_path)
    track = load_track(track_file)
    run_dirs = runner.run(track, "baseline", seeds=[1, 2], runs_dir=tmp_path / "runs")
    records = [read_record(d) for d in run_dirs]
    assert all(r.status == "completed" and r.official for r in records)

    tokenizer_dir = next((cache_root() / "tokenizers").glob(f"{track.name}-*"))
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'lb.db'}",
        storage_dir=tmp_path / "storage",
        track_files=[track_file],
        track_resources={track.name: TrackResources(data_dir=PRETRAIN, tokenizer_dir=tokenizer_dir)},
        cache_ttl_s=0.0,
    )
    client = TestClient(create_app(settings))
    token = create_token("carol", settings=settings)
    for run_dir in run_dirs:
        response = client.post(
            "/api/runs",
            headers={"Authorization": f"Bearer {token}"},
            files={"bundle": ("bundle.tar.gz", pack(run_dir), "application/gzip")},
        )
        assert response.status_code == 201, response.text
    assert verify_worker(once=True, settings=settings, worker_id="e2e") == 2

    for record in records:
        run = client.get(f"/api/runs/{record.run_id}").json()
        detail = run["verification_detail"]
        assert run["verification"] == "verified", detail["reasons"]
        assert detail["recomputed_val_bpb"] == pytest.approx(record.result.value, abs=1e-6)
        assert detail["recomputed_train_time_s"] == pytest.approx(record.timing.train_time_s, rel=1e-9)
    [top] = client.get(f"/api/tracks/{track.name}/leaderboard").json()
    assert top["rank"] == 1 and top["submitter"] == "carol" and top["n_verified"] == 2
    assert top["p_value"] < 0.01
    page = client.get(f"/tracks/{track.name}")
    assert page.status_code == 200 and "carol" in page.text


def test_speedrun_run_with_a_server_registers_first_uploads_each_run_and_reports_a_miss(tmp_path):
    """`speedrun run … --server URL --token T`: the server names the campaign before anything trains, the
    completed run is uploaded and verifies, and the seed that failed is reported as a miss, so the submission
    does not rank (every seed counts)."""
    track_file = write_track(tmp_path)
    track = load_track(track_file)
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'lb.db'}",
        storage_dir=tmp_path / "storage",
        track_files=[track_file],
        # No tokenizer named: the server finds the one the run trained in the cache (protocol/paths.py).
        track_resources={track.name: TrackResources(data_dir=PRETRAIN)},
        cache_ttl_s=0.0,
    )
    token = create_token("dana", settings=settings)
    # A real failure: the trainer of seed 2 dies in the submission's schedule hook.
    crashy = tmp_path / "crashy.py"
    crashy.write_text(
        "import torch\n\n\ndef build_schedule(plan):\n"
        "    if torch.initial_seed() == 2:\n        raise RuntimeError('seed 2 breaks')\n"
        "    return plan.schedule()\n"
    )
    with serve_in_thread(create_app(settings)) as url:
        command = ["run", str(crashy), "--track", str(track_file), "--seed-list", "1", "2",
                   "--runs-dir", str(tmp_path / "runs"), "--server", url, "--token", token]  # fmt: skip
        # A submission that fails its local checks registers nothing: no seed is spent on the server.
        with pytest.raises(SystemExit, match="2"):
            speedrun.main(command)
        with Session(get_engine(settings.database_url)) as session:
            assert session.exec(select(Registration)).all() == []
        crashy.write_text(crashy.read_text() + "\nMETADATA = {'authors': ['dana'], 'description': 'dies on seed 2'}\n")
        with pytest.raises(SystemExit, match="1 of 2 runs did not complete"):
            speedrun.main(command)
        [campaign] = (tmp_path / "runs" / "campaigns").glob("reg-*.json")
        ok, missed = (f"{campaign.stem}-s{seed}" for seed in (1, 2))
        assert verify_worker(once=True, settings=settings, worker_id="e2e") == 1
        assert requests.get(f"{url}/api/runs/{ok}").json()["verification"] == "verified"
        assert requests.get(f"{url}/api/runs/{missed}").json()["status"] == "failed"
        [standing] = requests.get(f"{url}/api/tracks/{track.name}/leaderboard").json()
        assert standing["n_registered"] == 2 and standing["n_missed"] == 1 and standing["rank"] is None
        assert "misses" in standing["why_unranked"]
        # The seeds are the server's now: registering them again is refused, in one line.
        with pytest.raises(SubmitError, match="registered for crashy already"):
            register_campaign(url, token, track=track.name, submission="crashy", seeds=[2])
