"""Issue #14's attacks, each reproduced against the service and now failing.

1. forged times (through upload and the worker: tests/test_leaderboard_forgery.py has every variant)
2. run theft: files of an unverified run are not downloadable; the same weights re-uploaded are refused
3. bundles that killed the worker are refused at upload; one planted past the upload ends as a verdict
4. bodies are bounded before they are read; pages never read events.jsonl; gzip bombs stop
5. record shapes that gave 500s are 422s and leave nothing on disk; leftovers are swept; tokens expire
   and are revoked; token guessing is rate limited; messages carry no absolute paths; hardware is shown
   against the track
"""

import io
import json
import shutil
import struct
import tarfile
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from leaderboard import crud, uploads
from leaderboard.app import create_app, sweep_storage
from leaderboard.models import ApiToken, Run, Verification, utcnow
from leaderboard.redact import redact
from leaderboard.verifier import verify_worker
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import (  # noqa: F401 -- shared fixtures
    db_url,
    edited,
    env,
    golden_bundles,
    make_env,
    upload,
)


def leftovers(e) -> list[str]:
    root = e.settings.storage_dir
    return sorted(str(p.relative_to(root)) for d in ("staging", "bundles") for p in (root / d).glob("*"))


# ------------------------------------------------------------------ 1. forged times, end to end


def test_a_forged_time_is_refused_at_upload_or_rejected_by_the_worker(env, golden_bundles, tmp_path):  # noqa: F811
    b = golden_bundles["r0"]

    def no_walls(path):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        kept = [e for e in lines if e["event"] != "step" or e["step"] <= 11]
        for e in kept:
            e.pop("wall")
        return kept

    forged = dict(b)
    forged["events.jsonl"] = tmp_path / "events.jsonl"
    forged["events.jsonl"].write_text("".join(json.dumps(e) + "\n" for e in no_walls(b["events.jsonl"])))
    forged["record.json"] = edited(b, tmp_path, lambda r: r["timing"].update(steps=0, train_time_s=0.0011))[
        "record.json"
    ]
    r = upload(env, forged, env.bob)
    assert r.status_code == 422 and "wall" in r.json()["detail"]

    halved = dict(b)  # every dt halved, the sums adjusted, save_every = 1: uploads, then the worker rejects it
    lines = [json.loads(x) for x in b["events.jsonl"].read_text().splitlines()]
    for e in lines:
        if e["event"] == "step":
            e["dt_s"] /= 2
    total = sum(e["dt_s"] for e in lines if e["event"] == "step" and e["step"] > 10)
    lines[-1]["train_time_s"] = total
    halved["events.jsonl"] = tmp_path / "halved.jsonl"
    halved["events.jsonl"].write_text("".join(json.dumps(e) + "\n" for e in lines))

    def claim(rec):
        rec["timing"]["train_time_s"] = total
        rec["config"]["save_every"] = 1

    halved["record.json"] = edited(b, tmp_path, claim)["record.json"]
    assert upload(env, halved, env.bob).status_code == 201
    assert verify_worker(once=True, settings=env.settings) == 1
    run = env.client.get("/api/runs/r0").json()
    assert run["verification"] == "rejected"
    assert any("step times were edited" in why for why in run["verification_detail"]["reasons"])


# ------------------------------------------------------------------ 2. run theft


def test_an_unverified_runs_files_are_its_owners_and_its_weights_are_one_run(env, golden_bundles, tmp_path):  # noqa: F811
    assert upload(env, golden_bundles["r0"], env.alice).status_code == 201
    for name in ("model.safetensors", "events.jsonl", "record.json"):
        assert env.client.get(f"/api/runs/r0/files/{name}").status_code == 403
        assert env.client.get(f"/api/runs/r0/files/{name}", headers=env.auth(env.bob)).status_code == 403
        assert env.client.get(f"/api/runs/r0/files/{name}", headers=env.auth(env.admin)).status_code == 200
    # The thief has the files anyway (say, once verified): a new run id, seed, submission name and scaled times.
    stolen = edited(
        golden_bundles["r0"],
        tmp_path,
        lambda r: (
            r.update(run_id="mine-1", seed=77, submission={"name": "mine", "hash": "b" * 64})
            or r["timing"].update(train_time_s=r["timing"]["train_time_s"] * 0.97)
        ),
    )
    r = upload(env, stolen, env.bob)
    assert r.status_code == 409 and "uploaded first as run r0 by alice" in r.json()["detail"]
    page = env.client.get("/runs/r0").text
    assert "Owner <strong>alice</strong>, first uploaded" in page and "/api/runs/r0/files/" not in page


def test_the_weights_hash_ignores_how_the_file_was_written(golden_bundles, tmp_path):  # noqa: F811
    from safetensors.torch import load_file, save_file

    from leaderboard import members

    src = golden_bundles["r0"]["model.safetensors"]
    tensors = load_file(src)
    save_file(dict(reversed(list(tensors.items()))), tmp_path / "b.safetensors", metadata={"note": "a copy"})
    hashes = [members.weights_sha256(p, *members.read_safetensors_header(p)) for p in (src, tmp_path / "b.safetensors")]
    assert hashes[0] == hashes[1]


# ------------------------------------------------------------------ 3. bundles that killed the worker


def _header_with_extra_entry(path, out):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["extra"] = "x"
    raw = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_the_five_worker_killers_and_a_huge_sequence_len_are_422(env, golden_bundles, tmp_path):  # noqa: F811
    b = golden_bundles["r1"]
    telemetry = [json.loads(x) for x in b["telemetry.jsonl"].read_text().splitlines()]
    telemetry[0]["nvml"] = {"driver_version": "1", "count": 1, "gpus": "abc"}
    bad_telemetry = dict(b, **{"telemetry.jsonl": tmp_path / "t.jsonl"})
    bad_telemetry["telemetry.jsonl"].write_text("".join(json.dumps(t) + "\n" for t in telemetry))
    bad_header = dict(b, **{"model.safetensors": tmp_path / "m.safetensors"})
    _header_with_extra_entry(b["model.safetensors"], bad_header["model.safetensors"])
    cases = {  # made one at a time: edited() reuses its file
        "provenance.code": lambda: edited(b, tmp_path, lambda r: r["provenance"].update(code="x")),
        "save_every": lambda: edited(b, tmp_path, lambda r: r["config"].update(save_every="x")),
        "nvml.gpus": lambda: bad_telemetry,
        "extra": lambda: bad_header,
        "timing.steps": lambda: edited(b, tmp_path, lambda r: r["timing"].update(steps=10**9)),
        "sequence_len": lambda: edited(
            b, tmp_path, lambda m: m["model_config"].update(sequence_len=10**8), name="meta.json"
        ),
        "vocab_size": lambda: edited(
            b, tmp_path, lambda m: m["model_config"].update(vocab_size=50_000), name="meta.json"
        ),
    }
    for words, paths in cases.items():
        r = upload(env, paths(), env.alice)
        assert r.status_code == 422 and words in r.json()["detail"], (words, r.text)
    assert env.client.get("/api/runs").json() == [] and leftovers(env) == []


def test_a_hostile_bundle_past_the_upload_ends_as_a_verdict_and_the_worker_lives(tmp_path, golden_bundles):  # noqa: F811
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}", max_attempts=2, retry_after_s=0.0)  # noqa: F811
    assert upload(env, golden_bundles["r0"], env.alice).status_code == 201
    assert upload(env, golden_bundles["r1"], env.alice).status_code == 201
    engine = env.client.app.state.engine
    with Session(engine) as session:  # the stored bundle of r0 is swapped for garbage after the upload
        run = crud.get_run(session, run_id="r0")
        stored = env.settings.storage_dir / "bundles" / run.bundle_sha256
    (stored / "events.jsonl").write_text('{"event": "step", "step": "x"}\n')
    (stored / "model.safetensors").write_bytes(b"\x00" * 64)
    assert verify_worker(once=True, settings=env.settings) >= 2  # r0 twice (capped), r1 once
    r0 = env.client.get("/api/runs/r0").json()
    assert r0["verification"] == "error" and r0["verification_detail"]["attempts"] == 2
    assert "/" + str(tmp_path).strip("/").split("/")[0] not in r0["verification_detail"]["error"]  # no machine path
    assert env.client.get("/api/runs/r1").json()["verification"] == "verified"


def test_a_verification_over_its_memory_limit_is_an_error_not_a_dead_worker(tmp_path, golden_bundles):  # noqa: F811
    env = make_env(  # noqa: F811
        tmp_path, f"sqlite:///{tmp_path / 'lb.db'}", verify_memory_bytes=300 * 2**20, max_attempts=1, retry_after_s=0
    )
    assert upload(env, golden_bundles["r2"], env.alice).status_code == 201
    assert verify_worker(once=True, settings=env.settings) == 1
    run = env.client.get("/api/runs/r2").json()
    assert run["verification"] == "error" and "memory" in run["verification_detail"]["error"]


def test_leases_are_renewed_while_a_job_runs(env, golden_bundles):  # noqa: F811
    from leaderboard.verifier import claim, renew

    upload(env, golden_bundles["r0"], env.alice)
    engine = env.client.app.state.engine
    with Session(engine) as session:
        job = claim(session, worker_id="a", lease_s=60)
        old = job.claimed_at
        assert renew(engine, job_id=job.id, worker_id="a") and not renew(engine, job_id=job.id, worker_id="b")
        session.refresh(job)
        assert job.claimed_at >= old and claim(session, worker_id="b", lease_s=60) is None


# ------------------------------------------------------------------ 4. bounded everything


def test_padded_events_are_refused_and_pages_never_read_the_events(env, golden_bundles, tmp_path):  # noqa: F811
    b = golden_bundles["r0"]
    padded = dict(b, **{"events.jsonl": tmp_path / "padded.jsonl"})
    lines = b["events.jsonl"].read_text().splitlines()
    step = json.loads(lines[3])
    step["pad"] = "x" * 2_000_000
    padded["events.jsonl"].write_text("\n".join([*lines[:3], json.dumps(step), *lines[4:]]) + "\n")
    r = upload(env, padded, env.alice)
    assert r.status_code == 422 and "pad" in r.json()["detail"]
    assert upload(env, b, env.alice).status_code == 201
    with Session(env.client.app.state.engine) as session:
        stored = env.settings.storage_dir / "bundles" / crud.get_run(session, run_id="r0").bundle_sha256
    (stored / "events.jsonl").unlink()  # a page that read it would fail now
    (stored / "telemetry.jsonl").unlink()
    page = env.client.get("/runs/r0")
    assert page.status_code == 200 and page.text.count('class="series"') >= 4  # loss, smoothed, 3 telemetry


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(env):  # noqa: F811
    sent = []

    def body():
        for _ in range(200):
            sent.append(1)
            yield b"\0" * 65536

    r = env.client.post("/api/runs", content=body(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 401 and leftovers(env) == []
    assert len(sent) < 200  # the server answered without taking the 13 MB


def test_a_gzip_bomb_stops_at_the_expansion_ratio(env, golden_bundles):  # noqa: F811
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.log")
        info.size = 200 * 2**20
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert len(buf.getvalue()) < 2**20
    r = env.client.post("/api/runs", files={"bundle": ("b.tar.gz", buf.getvalue())}, headers=env.auth(env.alice))
    assert r.status_code == 413 and "expands" in r.json()["detail"] and leftovers(env) == []


def test_request_bodies_are_capped_per_route_before_they_are_read(env):  # noqa: F811
    big = {"model": "golden", "messages": [{"role": "user", "content": "x" * 1_000_000}]}
    assert env.client.post("/v1/chat/completions", json=big).status_code == 413
    r = env.client.post("/api/admin/tokens", content=b"{" + b" " * 100_000 + b"}", headers=env.auth(env.admin))
    assert r.status_code == 413 and "limit" in r.json()["detail"]


# ------------------------------------------------------------------ 5. leftovers, 500s, accounts


def test_record_shapes_that_gave_500s_are_422_and_leave_nothing(env, golden_bundles, tmp_path):  # noqa: F811
    b = golden_bundles["r0"]
    cases = [
        lambda r: r["throughput"].update(tokens_per_s="fast"),
        lambda r: r.update(seed=10**30),
        lambda r: r["timing"].update(steps=10**12),
        lambda r: r["telemetry"].update(energy_kwh=float("inf")),
        lambda r: r["provenance"]["environment"].update(gpus=[{"name": "x" * 10_000}]),
        lambda r: r.update(run_id="../../etc"),
    ]
    for i, edit in enumerate(cases):
        r = upload(env, edited(b, tmp_path, edit), env.alice)
        assert r.status_code == 422, (i, r.status_code, r.text)
    step_loss = dict(b, **{"events.jsonl": tmp_path / "loss.jsonl"})
    step_loss["events.jsonl"].write_text(b["events.jsonl"].read_text().replace('"loss": 8.3', '"loss": "low"', 1))
    assert upload(env, step_loss, env.alice).status_code == 422  # a string loss never reaches a page
    assert leftovers(env) == [] and env.client.get("/api/runs").json() == []


def test_leftovers_of_a_killed_upload_are_swept_at_start_up(env, golden_bundles):  # noqa: F811
    assert upload(env, golden_bundles["r0"], env.alice).status_code == 201
    root = env.settings.storage_dir
    (root / "staging" / "dead-upload").mkdir(parents=True)
    (root / "staging" / "dead-upload" / "model.safetensors").write_bytes(b"\0" * 1000)
    (root / "bundles" / ("f" * 64)).mkdir()
    env.settings.sweep_after_s = 0.0
    removed = sweep_storage(env.client.app.state.engine, env.settings)
    assert sorted(removed) == ["bundles/" + "f" * 64, "staging/dead-upload"]
    assert len(leftovers(env)) == 1  # r0's own bundle stays


def test_tokens_expire_and_are_revoked_by_the_cli_and_the_api(env):  # noqa: F811
    from leaderboard.tokens import create_token, revoke_tokens_cli

    assert env.client.get("/api/me", headers=env.auth(env.bob)).status_code == 200
    with Session(env.client.app.state.engine) as session:
        for row in session.exec(select(ApiToken)).all():
            row.expires_at = utcnow() - timedelta(seconds=1)
            session.add(row)
        session.commit()
    r = env.client.get("/api/me", headers=env.auth(env.bob))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    carol = create_token("carol", settings=env.settings)
    assert env.client.delete("/api/tokens/current", headers=env.auth(carol)).json()["revoked"] == 1
    assert env.client.get("/api/me", headers=env.auth(carol)).status_code == 401
    dave = create_token("dave", settings=env.settings)
    assert revoke_tokens_cli("dave", settings=env.settings) == 1
    assert env.client.get("/api/me", headers=env.auth(dave)).status_code == 401
    admin = create_token("root", admin=True, settings=env.settings)
    erin = create_token("erin", settings=env.settings)
    r = env.client.post("/api/admin/submitters/erin/revoke", headers=env.auth(admin))
    assert r.status_code == 200 and r.json()["revoked"] == 1
    assert env.client.post("/api/admin/submitters/nobody/revoke", headers=env.auth(admin)).status_code == 404
    assert env.client.get("/api/me", headers=env.auth(erin)).status_code == 401


def test_token_guessing_and_floods_are_rate_limited(tmp_path):
    from fastapi.testclient import TestClient

    s = fixtures.server_settings(tmp_path, rate_limit_auth_failures="5/minute", rate_limit_per_ip="30/minute")
    client = TestClient(create_app(s))
    codes = [client.get("/api/me", headers={"Authorization": f"Bearer sr_guess{i}"}).status_code for i in range(8)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
    r = client.get("/api/me", headers={"Authorization": "Bearer sr_guess9"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    codes = [client.get("/api/tracks").status_code for _ in range(30)]
    assert 429 in codes and client.get("/healthz").status_code == 200


def test_messages_carry_no_absolute_paths():
    assert redact("cannot read /srv/leaderboard/storage/bundles/ab/meta.json (errno 2)") == (
        "cannot read …/meta.json (errno 2)"
    )
    assert redact("see https://example.org/a/b and 3/4") == "see https://example.org/a/b and 3/4"


def test_a_gpu_claim_on_a_cpu_track_is_shown_as_the_cpu_run_it_was(env, golden_bundles, tmp_path):  # noqa: F811
    claims_h100 = edited(
        golden_bundles["r0"],
        tmp_path,
        lambda r: r["provenance"]["environment"].update(gpu_count=8, gpus=[{"name": "NVIDIA H100 80GB HBM3"}] * 8),
    )
    run = upload(env, claims_h100, env.alice).json()
    assert run["hardware"].startswith("CPU (test CPU), 2 threads") and "unused on a CPU track" in run["hardware"]
    assert "H100" not in run["hardware"].split("(the record")[0]


def test_chat_refuses_nan_and_huge_seeds_with_422(env):  # noqa: F811
    for body in (
        '{"model": "golden", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        '{"model": "golden", "messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}',
    ):
        r = env.client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text


def test_a_stored_bundle_is_removed_when_its_insert_fails(env, golden_bundles, monkeypatch):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    def store_then_fail(staged, storage_dir):  # the files moved, then the commit fails
        shutil.copytree(staged.dir, storage_dir / "bundles" / staged.sha256)
        broken()

    monkeypatch.setattr(uploads, "store", store_then_fail)
    with pytest.raises(RuntimeError):
        upload(env, golden_bundles["r0"], env.alice)
    assert leftovers(env) == []
    with Session(env.client.app.state.engine) as session:
        assert session.exec(select(Run)).all() == [] and session.exec(select(Verification)).all() == []
