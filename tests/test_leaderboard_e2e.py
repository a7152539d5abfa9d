"""End to end: real CPU runs from the harness are packed, uploaded, verified by the worker, and ranked."""

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from harness import runner  # noqa: E402
from harness.submit import pack  # noqa: E402
from leaderboard.app import create_app  # noqa: E402
from leaderboard.settings import Settings, TrackResources  # noqa: E402
from leaderboard.tokens import create_token  # noqa: E402
from leaderboard.verifier import verify_worker  # noqa: E402
from protocol.paths import cache_root  # noqa: E402
from protocol.record import read_record  # noqa: E402
from protocol.tracks import load_track  # noqa: E402
from tests.conftest import PRETRAIN  # noqa: E402
from tests.test_harness import cache, write_track  # noqa: E402, F401 -- the tokenizer cache fixture


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
