"""The verification worker: honest golden bundles verify and rank; each tampering is rejected for its reason.

Each verification runs in its own limited child process (leaderboard/isolation.py) that recomputes the
model's val bpb (4 batches of 4x256 tokens on CPU): a few seconds each.
"""

import json
import os

import pytest
from sqlmodel import Session, select

import sandbox
from leaderboard import checks, isolation
from leaderboard.models import Verification
from leaderboard.verifier import claim, verify_worker
from protocol.record import read_record
from protocol.tracks import load_track
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import db_url, env, golden_bundles, upload  # noqa: F401 -- shared fixtures

REASONS = {  # tampering -> (check that fails, words its reason must contain)
    "metric": ("val_bpb", "claimed 5.9, recomputed 6.2985"),
    "step_times": ("train_time", "the step events sum to"),
    "step_times_consistent": ("train_time", "step times were edited"),
    "baseline_hash": ("code", "baseline code hash 000000000000"),
}


# PostgreSQL only under -m slow: every bundle here is re-scored, which is the same work on either database, and
# the PostgreSQL-only paths (the job queue's SKIP LOCKED, re-verification) have tests of their own that run by default.
@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True)
def test_honest_runs_verify_rank_and_set_the_record_tampered_ones_are_rejected(env, golden_bundles):  # noqa: F811
    for name in ("r0", "r1", "r2"):
        assert upload(env, golden_bundles[name], env.alice).status_code == 201
    for name in REASONS:
        assert upload(env, golden_bundles[name], env.bob).status_code == 201
    assert verify_worker(once=True, settings=env.settings, worker_id="test") == 3 + len(REASONS)

    for name in ("r0", "r1", "r2"):
        run = env.client.get(f"/api/runs/{name}").json()
        v = run["verification_detail"]
        assert run["verification"] == "verified", v["reasons"]
        assert v["recomputed_val_bpb"] == pytest.approx(fixtures.GOLDEN_BPB, abs=1e-5)
        assert v["recomputed_train_time_s"] == pytest.approx(run["train_time_s"], rel=1e-9)
        assert {c["name"]: c["outcome"] for c in run["checks"]} == {
            "record": "pass",
            "code": "pass",
            "data": "pass",
            "tokenizer": "pass",
            "hardware": "pass",
            "train_time": "pass",
            "weights": "pass",
            "val_bpb": "pass",
            "heldout": "skip",  # the golden track pins no held-out shards (tests/test_leaderboard_heldout.py)
        }

    for tamper, (check, words) in REASONS.items():
        run = env.client.get(f"/api/runs/t-{tamper}").json()
        assert run["verification"] == "rejected", tamper
        reasons = run["verification_detail"]["reasons"]
        assert any(r.startswith(f"{check}:") and words in r for r in reasons), (tamper, reasons)
    r = upload(env, golden_bundles["pickle"], env.bob)
    assert r.status_code == 422 and "pickle" in r.json()["detail"]  # refused unread

    board = env.client.get("/api/tracks/golden/leaderboard").json()
    top = board[0]
    assert top["rank"] == 1 and top["submitter"] == "alice" and top["n_verified"] == 3 and top["p_value"] == 0.0
    mean = sum(env.client.get(f"/api/runs/r{i}").json()["train_time_s"] for i in range(3)) / 3
    assert top["time_mean_s"] == pytest.approx(mean)
    assert all(s["rank"] is None for s in board[1:])  # bob's bundles are all rejected
    records = env.client.get("/api/tracks/golden/records").json()
    assert len(records) == 1 and records[0]["submission"] == "golden-sub" and records[0]["n"] == 3


def test_one_seed_does_not_rank(env, golden_bundles):  # noqa: F811
    upload(env, golden_bundles["r0"], env.alice)
    verify_worker(once=True, settings=env.settings)
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["n_verified"] == 1 and standing["rank"] is None and "at least 2 runs" in standing["why_unranked"]
    assert env.client.get("/api/tracks/golden/records").json() == []


def test_a_run_the_server_cannot_check_stays_pending(tmp_path, db_url, golden_bundles):  # noqa: F811
    from leaderboard.settings import TrackResources
    from tests.test_leaderboard_api import make_env

    e = make_env(tmp_path, db_url)
    e.settings.track_resources = {fixtures.TRACK: TrackResources(data_dir=None, tokenizer_dir=tmp_path / "absent")}
    upload(e, golden_bundles["r0"], e.alice)
    assert verify_worker(once=True, settings=e.settings) == 1
    run = e.client.get("/api/runs/r0").json()
    assert run["verification"] == "pending" and "no tokenizer" in run["verification_detail"]["error"]
    assert verify_worker(once=True, settings=e.settings) == 0  # it waits retry_after_s before another try


def test_admin_reverify_queues_the_run_again(env, golden_bundles):  # noqa: F811
    upload(env, golden_bundles["baseline_hash"], env.alice)
    verify_worker(once=True, settings=env.settings)
    assert env.client.get("/api/runs/t-baseline_hash").json()["verification"] == "rejected"
    r = env.client.post("/api/admin/runs/t-baseline_hash/reverify", headers=env.auth(env.admin))
    assert r.status_code == 200 and r.json()["status"] == "pending"
    assert env.client.get("/api/runs/t-baseline_hash").json()["checks"] == []


def test_two_workers_never_claim_the_same_job(env, golden_bundles):  # noqa: F811
    for name in ("r0", "r1"):
        upload(env, golden_bundles[name], env.alice)
    engine = env.client.app.state.engine
    with Session(engine) as a, Session(engine) as b:
        if engine.dialect.name == "postgresql":
            # Worker A holds its row locked mid-claim; B skips it (SKIP LOCKED) rather than wait or take it.
            locked = a.exec(select(Verification).order_by(Verification.id).limit(1).with_for_update()).first()
            job_b = claim(b, worker_id="b", lease_s=3600)
            assert job_b is not None and job_b.id != locked.id
            a.rollback()
            job_a = claim(a, worker_id="a", lease_s=3600)
            assert job_a is not None and job_a.id == locked.id
        else:
            job_a, job_b = claim(a, worker_id="a", lease_s=3600), claim(b, worker_id="b", lease_s=3600)
            assert {job_a.id, job_b.id} == {1, 2}
        assert claim(a, worker_id="a", lease_s=3600) is None  # both are taken, and their leases hold
        assert claim(b, worker_id="b", lease_s=0) is not None  # an expired lease is taken again


def test_weights_format_tells_safetensors_from_pickles(tmp_path, golden_bundles):  # noqa: F811
    import torch

    from leaderboard import recompute

    assert recompute.weights_format(golden_bundles["r0"]["model.safetensors"])[0] == "safetensors"
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    assert "torch.save" in recompute.weights_format(tmp_path / "zip.pt")[0]
    assert "pickle" in recompute.weights_format(golden_bundles["pickle"]["model.safetensors"])[0]
    (tmp_path / "junk").write_bytes(b"\xff" * 64)
    assert recompute.weights_format(tmp_path / "junk")[1] is None


def test_a_hostile_meta_is_rejected_before_building_the_model(tmp_path, golden_bundles):  # noqa: F811
    import shutil

    d = tmp_path / "b"
    shutil.copytree(golden_bundles["r0"]["record.json"].parent, d)
    meta = json.loads((d / "meta.json").read_text())
    meta["model_config"]["n_layer"] = 1000  # would be ~10 GB if built
    (d / "meta.json").write_text(json.dumps(meta))
    result, config = checks.check_weights(d, load_track(fixtures.golden_track_file(tmp_path)))
    assert result.outcome == "fail" and config is None and "hold only 35 tensors" in result.detail


def test_a_core_track_recomputes_core_and_compares_it(golden_bundles, monkeypatch):  # noqa: F811
    """The CORE path, with eval.run.evaluate replaced (the real bundle is not offline): wiring and comparison."""
    from types import SimpleNamespace

    from leaderboard import recompute

    calls = []

    def fake_core(model, tokenizer, *, eval_bundle, max_per_task):
        calls.append((eval_bundle, max_per_task))
        return {"core": 0.2600, "official": True, "bundle": {"content_sha256": "b" * 64}}

    monkeypatch.setattr(recompute, "core", fake_core)
    bundle_dir = golden_bundles["r0"]["record.json"].parent
    track = SimpleNamespace(metric="core")
    facts = checks.ServerFacts(
        code_hashes={},
        frozen_packages=(),
        tokenizer_dir=fixtures.GOLDEN_TOKENIZER,
        tokenizer_hash="t",
        data_dir=fixtures.PRETRAIN,
        data_hash="d",
        eval_bundle=bundle_dir,
        eval_tokens=4096,
        core_max_per_task=-1,
    )
    record = read_record(bundle_dir)
    record.result = record.result.model_copy(update={"metric": "core", "core": 0.2601, "value": 0.2601})
    results, recomputed = checks.check_metric(record, bundle_dir, track, facts)
    assert {r.name: r.outcome for r in results} == {"val_bpb": "pass", "core": "pass", "heldout": "skip"}
    assert recomputed["core"] == 0.26 and calls == [(bundle_dir, -1)]
    record.result = record.result.model_copy(update={"core": 0.30, "value": 0.30})
    results, _ = checks.check_metric(record, bundle_dir, track, facts)
    assert [r.outcome for r in results if r.name in ("core", "metric")] == ["fail", "fail"]


WHAT_THE_CHILD_SEES = (
    "import json, os, sys; json.dump({'env': sorted(os.environ), 'uid': os.getuid(), 'job': open(sys.argv[-1]).read(),"
    " 'given': os.listdir(sys.argv[1]), 'repo': os.path.isdir(os.path.join(os.getcwd(), 'leaderboard'))}, sys.stdout)"
)


@pytest.mark.parametrize("bubblewrap", [True, False])
def test_the_verification_child_runs_in_the_sandbox_and_under_rlimits_without_it(tmp_path, monkeypatch, bubblewrap):
    if bubblewrap and sandbox.available() is not None:
        pytest.skip(sandbox.available())
    if not bubblewrap:
        monkeypatch.setattr(
            sandbox, "available", lambda: "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
        )
    monkeypatch.setenv("DATABASE_URL", "postgresql://speedrun:secret@127.0.0.1/speedrun")
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "model.safetensors").write_bytes(b"x")
    limits = isolation.Limits(memory_bytes=2 * 2**30, cpu_s=120, wall_s=120, file_bytes=2**20)
    out = isolation.run_limited(
        ["-c", WHAT_THE_CHILD_SEES, str(tmp_path / "bundle")], job=b'{"run": 1}', limits=limits,
        read_only=[tmp_path / "bundle"],
    )  # fmt: skip
    seen = json.loads(out)
    assert seen["job"] == '{"run": 1}' and seen["given"] == ["model.safetensors"]
    if bubblewrap:  # nobody, none of the server's environment; the project and what it was given, read-only
        assert seen["uid"] == 65534 and "DATABASE_URL" not in seen["env"] and seen["repo"], seen
    else:  # the rlimited child: the worker's own user (it runs no uploaded code)
        assert seen["uid"] == os.getuid()
