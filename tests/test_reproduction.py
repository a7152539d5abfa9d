"""Reproduction: the rule, the choice of runs, runner machines over the API (re-runs: test_reproduction_e2e.py).

- the rule itself (leaderboard/comparison.py) on hand-made results: each way a claim can differ;
- which runs are re-run: one at random per submission, once its registered campaign is in;
- runner machines over the API: only a runner token, only jobs its hardware fits, only the jobs it holds,
  leases that expire and go back to the queue; an admin's requeue;
- without bubblewrap: weights still verified, nothing re-run, and the run page says why in one line.
"""

import time

import pytest
from sqlmodel import Session, select

import sandbox
from leaderboard import comparison, reproduction
from leaderboard.models import Registration, Run, TrackRow, Verification
from leaderboard.tokens import create_token
from leaderboard.verifier import verify_worker
from protocol.reproduce import Machine, ReproduceResult
from protocol.tracks import Reproduce
from tests.reproduction_fixtures import SUBMISSION, reproducing_env, with_source
from tests.test_leaderboard_api import db_url, golden_bundles, upload  # noqa: F401 -- shared fixtures

RULE = Reproduce(by="server", loss_abs_tolerance=1e-3, metric_abs_tolerance=1e-3, time_ratio_max=1.5)
CPU = "Test CPU 9000"


# ------------------------------------------------------------------ the rule


def claim(**kw) -> comparison.Claim:
    base = dict(submission_hash="a" * 64, losses=[9.0, 8.5, 8.1, 7.9], metric="val_bpb", metric_value=2.5,
                train_time_s=10.0, weights_sha256="b" * 64, hardware_kind="cpu", cpu_model=CPU, gpus=[],
                versions={"torch": "2.13.0"})  # fmt: skip
    return comparison.Claim(**base | kw)


def rerun(**kw) -> ReproduceResult:
    base = dict(job_id=1, status="ok", wall_s=30.0, machine=Machine(cpu_model=CPU, cpu_count=2, memory_bytes=2**34),
                run_status="completed", submission_hash="a" * 64, steps=4, losses=[9.0, 8.5, 8.1, 7.9],
                train_time_s=11.0, clock_ok=True, metric_value=2.5, weights_sha256="b" * 64)  # fmt: skip
    return ReproduceResult(**base | kw)


def test_an_identical_rerun_is_reproduced_with_its_evidence():
    verdict = comparison.compare(claim(), rerun(), RULE)
    assert (verdict.status, verdict.reasons) == ("reproduced", [])
    e = verdict.evidence
    assert e["weights"]["identical"] and e["losses"]["max_abs_diff"] == 0 and e["time"]["judged"]
    assert verdict.time_ratio == pytest.approx(1.1) and e["losses"]["pairs"][2] == [2, 8.1, 8.1]


@pytest.mark.parametrize(
    ("result", "why"),
    [
        (rerun(losses=[9.0, 8.5, 8.2, 7.9]), "step 2's training loss is 8.100000 claimed, 8.200000 reproduced"),
        (rerun(losses=[9.0, 8.5, 8.1], steps=3), "the re-run trained 3 steps, the claim 4"),
        (rerun(losses=[9.0, 8.5, None, None], run_status="diverged"), "the re-run diverged"),
        (rerun(metric_value=2.6), "the final val_bpb is 2.500000 claimed, 2.600000 reproduced"),
        (rerun(submission_hash="c" * 64), "submission hash cccccccccccc"),
        (rerun(train_time_s=40.0, wall_s=60.0), "the re-run took 4.00x the claimed timed seconds"),
        (rerun(train_time_s=40.0, wall_s=20.0), "the sandbox ran only 20.0 s"),
        (rerun(clock_ok=False, clock_detail="the steps claim 1 s"), "own clocks disagree"),
        (rerun(run_error="events.jsonl line 3 does not fit", steps=0, losses=[]), "could not be read back"),
    ],
)
def test_each_difference_disputes_the_claim(result, why):
    verdict = comparison.compare(claim(), result, RULE)
    assert verdict.status == "disputed" and any(why in r for r in verdict.reasons), verdict.reasons


def test_time_is_judged_only_on_the_runs_own_hardware():
    other = Machine(cpu_model="Other CPU", cpu_count=64, memory_bytes=2**36)
    elsewhere = rerun(train_time_s=40.0, wall_s=60.0, machine=other)
    verdict = comparison.compare(claim(), elsewhere, RULE)
    assert verdict.status == "reproduced" and verdict.time_ratio == pytest.approx(4.0)
    assert not verdict.evidence["time"]["judged"] and "Other CPU" in verdict.evidence["time"]["why_not_judged"]
    faster = comparison.compare(claim(), rerun(train_time_s=2.0), RULE)  # faster than claimed: never held against it
    assert faster.status == "reproduced"


@pytest.mark.parametrize(
    "result",
    [
        rerun(status="timeout", reason="killed after the wall-time limit of 900 s", run_status=None),
        rerun(status="failed", run_status="failed", run_error="the train process exited with code 1"),
        rerun(run_status="invalid", run_error="speedrun: invalid: the submission opened the val shard"),
        rerun(status="memory", run_status=None, reason="over the memory limit"),
    ],
)
def test_a_rerun_that_did_not_finish_is_an_error_not_a_verdict(result):
    verdict = comparison.compare(claim(), result, RULE)
    assert verdict.status == "error" and "did not finish in the sandbox" in verdict.reasons[0]
    assert verdict.evidence == {}


# ------------------------------------------------------------------ runner machines over the API


def runner_env(tmp_path, golden_bundles, db_url, **overrides):  # noqa: F811
    """A server whose golden track is re-run by runners, with r0 verified and its re-run queued."""
    env = reproducing_env(tmp_path / "lb", by="runners", database_url=db_url, **overrides)
    assert upload(env, with_source(golden_bundles["r0"], tmp_path / "r0"), env.alice).status_code == 201
    assert verify_worker(once=True, settings=env.settings) == 1  # verified; the re-run waits for a runner
    run = env.client.get("/api/runs/r0").json()
    assert run["verification"] == "verified" and run["reproduction"] == "pending", run["verification_detail"]
    return env


def register(env, name: str, cpu_count: int = 2) -> tuple[str, int]:
    token = create_token(name, runner=True, settings=env.settings)
    machine = {"cpu_model": CPU, "cpu_count": cpu_count, "memory_bytes": 2**34, "gpus": []}
    r = env.client.post("/api/runners", json={"name": name, "machine": machine}, headers=env.auth(token))
    assert r.status_code == 201, r.text
    return token, r.json()["runner_id"]


def failed_result(job_id: int) -> dict:
    return {"job_id": job_id, "status": "failed", "reason": "the runner could not prepare", "wall_s": 1.0,
            "machine": {"cpu_model": CPU, "cpu_count": 2, "memory_bytes": 2**34}}  # fmt: skip


def test_runners_take_only_jobs_they_fit_and_report_only_jobs_they_hold(tmp_path, golden_bundles, db_url):  # noqa: F811
    env = runner_env(tmp_path, golden_bundles, db_url, runner_lease_s=2.0, max_attempts=3, retry_after_s=0.0)
    c = env.client
    r = c.post("/api/runners", json={"name": "x", "machine": failed_result(1)["machine"]}, headers=env.auth(env.alice))
    assert r.status_code == 403 and "not a runner account" in r.json()["detail"]
    small, small_id = register(env, "one-core", cpu_count=1)
    assert c.post(f"/api/runners/{small_id}/claim", headers=env.auth(small)).status_code == 204  # a 2-thread track
    a, a_id = register(env, "box-a")
    b, b_id = register(env, "box-b")
    assert c.post(f"/api/runners/{a_id}/claim", headers=env.auth(b)).status_code == 403  # not B's runner
    job = c.post(f"/api/runners/{a_id}/claim", headers=env.auth(a)).json()
    assert job["run_id"] == "r0" and job["seed"] == 0 and job["track"]["name"] == "golden"
    jid = job["job_id"]
    assert c.get("/api/runs/r0/reproduction").json()["claimed_by"] == f"runner:{a_id}"
    assert c.post(f"/api/runners/{b_id}/claim", headers=env.auth(b)).status_code == 204  # held by A
    source = c.get(f"/api/runners/{a_id}/jobs/{jid}/source", headers=env.auth(a))
    assert source.status_code == 200 and len(source.content) > 512  # the uploaded source.tar
    # B forges a result (and a heartbeat) for A's job: refused, nothing written
    for path, body in (("result", failed_result(jid)), ("heartbeat", {"progress": "step 9"})):
        r = c.post(f"/api/runners/{b_id}/jobs/{jid}/{path}", json=body, headers=env.auth(b))
        assert r.status_code == 403 and "not held by runner" in r.json()["detail"], r.text
    assert c.get(f"/api/runners/{b_id}/jobs/{jid}/source", headers=env.auth(b)).status_code == 403
    # A's own malformed or misaddressed results: 422
    r = c.post(f"/api/runners/{a_id}/jobs/{jid}/result", json=failed_result(jid + 1), headers=env.auth(a))
    assert r.status_code == 422 and "posted to job" in r.json()["detail"]
    r = c.post(f"/api/runners/{a_id}/jobs/{jid}/result", json={"job_id": jid, "status": "great"}, headers=env.auth(a))
    assert r.status_code == 422 and "ReproduceResult" in r.json()["detail"]
    assert c.post(f"/api/runners/{a_id}/jobs/{jid}/heartbeat", json={"progress": "step 3 trained"},
                  headers=env.auth(a)).status_code == 200  # fmt: skip
    assert c.get("/api/runs/r0/reproduction").json()["progress"] == "step 3 trained"
    assert "step 3 trained" in c.get("/runs/r0").text
    # A vanishes: its lease expires, its late posts are refused, the job goes back to the queue
    time.sleep(2.5)
    r = c.post(f"/api/runners/{a_id}/jobs/{jid}/result", json=failed_result(jid), headers=env.auth(a))
    assert r.status_code == 409 and "lease" in r.json()["detail"], r.text
    assert c.post(f"/api/runners/{b_id}/claim", headers=env.auth(b)).json()["job_id"] == jid
    r = c.post(f"/api/runners/{a_id}/jobs/{jid}/heartbeat", json={}, headers=env.auth(a))
    assert r.status_code == 403  # B holds it now
    # B reports a re-run that could not finish: an error attempt, never "reproduced"; the job is queued again
    r = c.post(f"/api/runners/{b_id}/jobs/{jid}/result", json=failed_result(jid), headers=env.auth(b))
    assert r.status_code == 200 and r.json()["status"] == "pending" and "could not prepare" in r.json()["error"]
    live = c.get("/api/runs/r0/reproduction").json()
    assert live["status"] == "pending" and live["queue_position"] == 1 and live["evidence"] is None
    assert c.get("/api/runs/r0").json()["reproduction"] == "pending"
    assert (
        c.post(f"/api/runners/{b_id}/jobs/{jid}/result", json=failed_result(jid), headers=env.auth(b)).status_code
        == 403
    )
    assert (
        c.post(f"/api/runners/{b_id}/jobs/99999/result", json=failed_result(99999), headers=env.auth(b)).status_code
        == 404
    )


def test_an_admin_requeues_a_rerun_that_ended_in_error(tmp_path, golden_bundles, db_url):  # noqa: F811
    env = runner_env(tmp_path, golden_bundles, db_url, max_attempts=1, retry_after_s=0.0)
    token, rid = register(env, "box")
    jid = env.client.post(f"/api/runners/{rid}/claim", headers=env.auth(token)).json()["job_id"]
    r = env.client.post(f"/api/runners/{rid}/jobs/{jid}/result", json=failed_result(jid), headers=env.auth(token))
    assert r.json()["status"] == "error"  # one attempt allowed: an error for an admin
    assert env.client.post("/api/admin/runs/r0/reproduce", headers=env.auth(env.alice)).status_code == 403
    r = env.client.post("/api/admin/runs/r0/reproduce", headers=env.auth(env.admin))
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["attempts"] == 0


def test_without_bubblewrap_weights_are_verified_and_nothing_is_rerun(tmp_path, golden_bundles, monkeypatch):  # noqa: F811
    why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    monkeypatch.setattr(sandbox, "available", lambda: why)
    env = reproducing_env(tmp_path / "lb", by="server")
    assert upload(env, with_source(golden_bundles["r1"], tmp_path / "r1"), env.alice).status_code == 201
    assert verify_worker(once=True, settings=env.settings) == 1  # the rlimited child verified it; no re-run
    run = env.client.get("/api/runs/r1").json()
    assert run["verification"] == "verified" and run["reproduction"] == "pending"
    assert f"this server cannot re-run submissions: {why}" in env.client.get("/runs/r1").text
    [row] = env.client.get("/api/tracks/golden/leaderboard").json()
    assert row["n_reproduce_needed"] == 1 and row["n_reproduced"] == 0 and row["rank"] is None


def test_the_rerun_is_chosen_at_random_once_the_campaign_is_in(tmp_path, golden_bundles):  # noqa: F811
    env = reproducing_env(tmp_path / "lb", by="runners")
    for name in ("r0", "r1", "r2"):
        assert upload(env, with_source(golden_bundles[name], tmp_path / name), env.alice).status_code == 201
    r = env.client.post("/api/registrations", json={"track": "golden", "submission": SUBMISSION, "seeds": [7]},
                        headers=env.auth(env.alice))  # fmt: skip
    assert r.status_code == 201
    with Session(env.client.app.state.engine) as session:
        for v in session.exec(select(Verification)).all():  # as the verifier would have found them
            v.status, v.recomputed_val_bpb, v.recomputed_train_time_s = "verified", 6.3, 10.0
            session.add(v)
        session.commit()
        runs = session.exec(select(Run).order_by(Run.id)).all()
        track = session.get(TrackRow, runs[0].track_id)
        assert reproduction.maybe_queue(session, run=runs[0], track=track) == []  # seed 7 is still due: wait
        registration = session.exec(select(Registration)).one()
        registration.deadline = registration.created_at  # it never came: a miss, and the choice goes ahead
        session.add(registration)
        session.commit()
        picked = set()
        for _ in range(20):
            [job] = reproduction.maybe_queue(session, run=runs[0], track=track)
            assert reproduction.maybe_queue(session, run=runs[0], track=track) == []  # the quota is 1
            picked.add(job.run_pk)
            session.delete(job)
            session.commit()
        assert len(picked) > 1 and picked <= {r.id for r in runs}, picked  # not always the first
