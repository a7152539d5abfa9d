"""Trust (issue #11, server side): registered runs where every seed counts, superseded track versions, and the
held-out score that flags a model fitted to the val shard.

Runs are marked verified directly here where the worker's checks are not what is tested; the held-out
test runs the real worker (two verifications, a few seconds each).
"""

import json
from datetime import timedelta

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from sqlmodel import Session

from baseline.loader import bos_bestfit_batches
from leaderboard import crud, ranking, recompute
from leaderboard.app import create_app
from leaderboard.models import TrackRow, utcnow
from leaderboard.settings import TrackResources
from leaderboard.verifier import verify_worker
from protocol.hashing import data_fingerprint, file_sha256
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import Env, db_url, edited, env, make_env, upload  # noqa: F401 -- shared fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    if why := fixtures.available():
        pytest.skip(why)
    return {}


def bundle(tmp_path, cache, run_id: str, seed: int, submission: str = "golden-sub", **kw):
    return fixtures.make_bundle(
        tmp_path / run_id, run_id=run_id, seed=seed, submission=submission, provenance_cache=cache, **kw
    )


def mark_verified(lb, *run_ids: str) -> None:
    """What the worker writes when every check passes (recomputed = claimed), then the standings."""
    with Session(lb.client.app.state.engine) as session:
        for run_id in run_ids:
            run = crud.get_run(session, run_id=run_id)
            v = crud.verification_of(session, run=run)
            v.sqlmodel_update(
                {"status": "verified", "recomputed_val_bpb": run.val_bpb, "recomputed_train_time_s": run.train_time_s}
            )
            session.add(v)
            session.commit()
            ranking.update_standing(session, track=session.get(TrackRow, run.track_id), submission_id=run.submission_id)


def register(lb, token: str, seeds, submission: str = "golden-sub", track: str = "golden"):
    return lb.client.post(
        "/api/registrations", json={"track": track, "submission": submission, "seeds": seeds}, headers=lb.auth(token)
    )


# ------------------------------------------------------------------ registrations


def test_registration_issues_run_ids_and_refuses_repeated_seeds(env, cache):  # noqa: F811
    r = register(env, env.alice, [1, 2, 3])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["track"] == "golden" and body["track_version"] == 1 and body["submission"] == "golden-sub"
    assert [x["seed"] for x in body["runs"]] == [1, 2, 3] and len({x["run_id"] for x in body["runs"]}) == 3
    assert register(env, env.alice, [4, 4]).status_code == 422
    r = register(env, env.alice, [3, 5])
    assert r.status_code == 422 and "[3]" in r.json()["detail"]
    assert register(env, env.alice, [6], track="nope").status_code == 404
    assert (
        env.client.post("/api/registrations", json={"track": "golden", "submission": "s", "seeds": [1]}).status_code
        == 401
    )
    assert register(env, env.bob, [1, 2]).status_code == 201  # another submitter's campaign: its own seeds


def test_every_registered_seed_counts(env, cache, tmp_path):  # noqa: F811
    runs = {x["seed"]: x["run_id"] for x in register(env, env.alice, [1, 2, 3]).json()["runs"]}
    wrong_seed = bundle(tmp_path, cache, runs[1], seed=9)
    r = upload(env, wrong_seed, env.alice)
    assert r.status_code == 422 and "registered with another seed" in r.json()["detail"]
    assert upload(env, bundle(tmp_path, cache, runs[1], seed=1), env.bob).status_code == 422  # not bob's
    for seed in (1, 2):
        assert upload(env, bundle(tmp_path, cache, runs[seed], seed=seed), env.alice).status_code == 201
    mark_verified(env, runs[1], runs[2])
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["rank"] == 1 and standing["n_registered"] == 3 and standing["n_missed"] == 0  # 3 not due yet

    miss = edited(bundle(tmp_path, cache, runs[3], seed=3), tmp_path, lambda rec: rec.update(status="failed"))
    r = upload(env, {"record.json": miss["record.json"]}, env.alice)  # a miss is reported by its record alone
    assert r.status_code == 201 and r.json()["verification"] == "missed"
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["rank"] is None and standing["n_missed"] == 1
    assert standing["why_unranked"] == "1 of 3 registered runs are misses: every seed counts"


def test_a_registered_run_that_never_arrives_is_a_miss_after_its_deadline(env, cache, tmp_path):  # noqa: F811
    runs = {x["seed"]: x["run_id"] for x in register(env, env.alice, [1, 2, 3]).json()["runs"]}
    for seed in (1, 2):
        assert upload(env, bundle(tmp_path, cache, runs[seed], seed=seed), env.alice).status_code == 201
    mark_verified(env, runs[1], runs[2])
    assert env.client.get("/api/tracks/golden/leaderboard").json()[0]["rank"] == 1
    with Session(env.client.app.state.engine) as session:
        reg = crud.get_registration(session, run_id=runs[3])
        reg.deadline = utcnow() - timedelta(minutes=1)
        session.add(reg)
        session.commit()
        assert ranking.expire_registrations(session, since=utcnow() - timedelta(hours=1), until=utcnow()) == 1
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["rank"] is None and "1 of 3 registered runs are misses" in standing["why_unranked"]
    late = upload(env, bundle(tmp_path, cache, runs[3], seed=3), env.alice)
    assert late.status_code == 422 and "after its deadline" in late.json()["detail"]


def test_a_failed_run_that_was_not_registered_is_refused(env, cache, tmp_path):  # noqa: F811
    b = bundle(tmp_path, cache, "free-run", seed=1)
    r = upload(
        env, {"record.json": edited(b, tmp_path, lambda rec: rec.update(status="failed"))["record.json"]}, env.alice
    )
    assert r.status_code == 422 and "registered run as a miss" in r.json()["detail"]


def test_two_runs_with_the_same_seed_count_once(env, cache, tmp_path):  # noqa: F811
    for run_id in ("a", "b", "c"):
        assert (
            upload(env, bundle(tmp_path, cache, run_id, seed=5 if run_id != "c" else 6), env.alice).status_code == 201
        )
    mark_verified(env, "a", "b", "c")
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["n_verified"] == 2  # a and c; b repeats a's seed


# ------------------------------------------------------------------ superseded track versions


def test_runs_of_an_old_track_version_are_superseded_and_stay_readable(tmp_path, cache):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")  # noqa: F811
    for i in range(2):
        assert upload(env, bundle(tmp_path, cache, f"v1-{i}", seed=i), env.alice).status_code == 201
    mark_verified(env, "v1-0", "v1-1")
    assert env.client.get("/api/tracks/golden/leaderboard").json()[0]["rank"] == 1
    settings = env.settings.model_copy()
    (tmp_path / "v2").mkdir()
    v2 = tmp_path / "v2" / "golden.toml"
    v2.write_text(env.settings.track_files[0].read_text().replace("version = 1", "version = 2"))
    settings.track_files = [v2]
    client = TestClient(create_app(settings))  # start-up syncs the track: v1 -> v2
    run = client.get("/api/runs/v1-0").json()
    assert run["superseded"] is True and run["track_version"] == 1
    (standing,) = client.get("/api/tracks/golden/leaderboard").json()
    assert standing["rank"] is None and standing["n_verified"] == 0
    page = client.get("/runs/v1-0").text
    assert "superseded (v1)" in page
    r = upload(Env(client, settings, env.admin, env.alice, env.bob), bundle(tmp_path, cache, "v1-2", seed=2), env.alice)
    assert r.status_code == 422 and "the server has v2" in r.json()["detail"]


# ------------------------------------------------------------------ the held-out score


def edited_lines(path, tmp_path, edit):
    """A copy of an events file with edit(line) applied to its checkpoint lines."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for line in lines:
        if line["event"] == "checkpoint":
            edit(line)
    out = tmp_path / f"edited-{path.name}"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return out


def tuned_on_val(tmp_path) -> torch.nn.Module:
    """The golden model after a few steps on the val split's first batches: it has seen what it is scored on."""
    from baseline.tokenizer import Tokenizer

    d = tmp_path / "tune"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"step": 1, "model_config": fixtures.GOLDEN_CONFIG}))
    fixtures.distinct_weights(fixtures.GOLDEN_WEIGHTS, d / "model.safetensors", salt="tuned")
    model, tokenizer = recompute.load_checkpoint(d, tokenizer_dir=fixtures.GOLDEN_TOKENIZER)
    batches = bos_bestfit_batches(Tokenizer.load(fixtures.GOLDEN_TOKENIZER), 4, 256, "val", fixtures.PRETRAIN)
    data = [next(batches)[:2] for _ in range(4)]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(6):
        for x, y in data:
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return model, tokenizer, d


def test_a_model_fitted_to_the_val_shard_is_flagged_and_an_honest_one_is_not(tmp_path, cache, one_thread):
    heldout = fixtures.PRETRAIN / "shard_00002.parquet"
    track = fixtures.TRACK_TOML.replace(
        "[tokenizer]",
        f'heldout_shards = ["{heldout.name}"]\nheldout_hash = "{data_fingerprint([heldout])}"\n\n[tokenizer]',
    )
    first = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")
    first.settings.track_files[0].write_text(track)
    first.settings.track_resources = {
        fixtures.TRACK: TrackResources(
            data_dir=fixtures.PRETRAIN, tokenizer_dir=fixtures.GOLDEN_TOKENIZER, heldout_dir=fixtures.PRETRAIN
        )
    }
    env = Env(TestClient(create_app(first.settings)), first.settings, first.admin, first.alice, first.bob)  # noqa: F811
    model, tokenizer, d = tuned_on_val(tmp_path)
    tuned_bpb = recompute.val_bpb(model, tokenizer, data_dir=fixtures.PRETRAIN, tokens=4096, batch_size=4)["bpb"]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, d / "model.safetensors")
    assert set(load_file(d / "model.safetensors")) == set(load_file(fixtures.GOLDEN_WEIGHTS))

    honest = bundle(tmp_path, cache, "honest", seed=1)
    fitted = bundle(tmp_path, cache, "fitted", seed=2)
    fitted["model.safetensors"] = d / "model.safetensors"
    fitted["events.jsonl"] = edited_lines(  # its run saved these weights
        fitted["events.jsonl"], tmp_path, lambda e: e.update(sha256=file_sha256(d / "model.safetensors"))
    )
    fitted["record.json"] = edited(fitted, tmp_path, lambda r: r["result"].update(value=tuned_bpb, val_bpb=tuned_bpb))[
        "record.json"
    ]
    for b in (honest, fitted):
        assert upload(env, b, env.alice).status_code == 201
    assert verify_worker(once=True, settings=env.settings) == 2

    ok = env.client.get("/api/runs/honest").json()
    assert ok["verification"] == "verified" and ok["verification_detail"]["flag"] is None
    assert {c["name"]: c["outcome"] for c in ok["checks"]}["heldout"] == "pass"
    run = env.client.get("/api/runs/fitted").json()
    v = run["verification_detail"]
    assert run["verification"] == "verified" and tuned_bpb < fixtures.GOLDEN_BPB - 0.1
    assert v["flag"] and "may have seen the val shard" in v["flag"]
    assert v["recomputed_heldout_bpb"] - v["recomputed_val_bpb"] > 0.05
    assert "held for review" in env.client.get("/runs/fitted").text
    (standing,) = env.client.get("/api/tracks/golden/leaderboard").json()
    assert standing["n_verified"] == 1  # the flagged run does not count until an admin clears it
    r = env.client.post("/api/admin/runs/fitted/clear-flag", headers=env.auth(env.admin))
    assert r.status_code == 200 and r.json()["flag_cleared_by"] == "admin"
    assert env.client.get("/api/tracks/golden/leaderboard").json()[0]["n_verified"] == 2
    assert env.client.post("/api/admin/runs/fitted/clear-flag", headers=env.auth(env.admin)).status_code == 409


def test_a_heldout_copy_with_the_wrong_fingerprint_is_an_error(tmp_path):
    from leaderboard.resources import _heldout
    from protocol.tracks import Dataset

    dataset = Dataset(source="local", heldout_shards=("shard_00002.parquet",), heldout_hash="0" * 64)
    files, why = _heldout(dataset, fixtures.PRETRAIN)
    assert files == () and "fingerprint" in why
    files, why = _heldout(dataset, tmp_path)
    assert files == () and "lacks" in why
