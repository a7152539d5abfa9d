"""The leaderboard API with TestClient, on SQLite always and on a real PostgreSQL when one is reachable.

PostgreSQL: LEADERBOARD_TEST_DATABASE_URL, else the server `scripts/ci_services.sh` starts
(postgresql+psycopg://speedrun_test:speedrun_test@127.0.0.1:5432/speedrun_test); each test gets an
empty `public` schema. The fixtures here are shared by the other tests/test_leaderboard_*.py files.
"""

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlmodel")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, make_url, text  # noqa: E402

from leaderboard.app import create_app  # noqa: E402
from leaderboard.db import get_engine  # noqa: E402
from leaderboard.tokens import create_token  # noqa: E402
from tests import leaderboard_fixtures as fixtures  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://speedrun_test:speedrun_test@127.0.0.1:5432/speedrun_test"
FIELD = {
    "record.json": "record",
    "events.jsonl": "events",
    "telemetry.jsonl": "telemetry",
    "model.safetensors": "model",
    "meta.json": "meta",
    "train.log": "log",
    "source.tar": "source",
}


def postgres_url() -> tuple[str | None, str]:
    """(url, why not) of a reachable PostgreSQL for the tests.

    Under pytest-xdist each worker gets a database of its own (`<name>_gw0`, ...), created on first use:
    every test starts by emptying the schema, which must not happen under another worker's test.
    """
    url = os.environ.get("LEADERBOARD_TEST_DATABASE_URL", PG_DEFAULT)
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 2}, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
            if worker := os.environ.get("PYTEST_XDIST_WORKER"):
                base = make_url(url)
                name = f"{base.database}_{worker}"
                if c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                    c.execute(text(f'CREATE DATABASE "{name}"'))
                url = base.set(database=name).render_as_string(hide_password=False)
        engine.dispose()
        return url, ""
    except Exception as e:  # noqa: BLE001 -- any failure to connect means: skip, and say why
        return None, f"no PostgreSQL at {url.split('@')[-1]} ({type(e).__name__}); run `bash scripts/ci_services.sh`"


def reset_postgres(url: str) -> None:
    get_engine(url).dispose()
    with create_engine(url).begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE"))
        c.execute(text("CREATE SCHEMA public"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lb.db'}"
        return
    url, why = postgres_url()
    if url is None:
        pytest.skip(why)
    reset_postgres(url)
    yield url
    get_engine(url).dispose()


@pytest.fixture(scope="session")
def golden_bundles(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Honest runs r0, r1, r2 of one submission, and one bundle per tampering."""
    if why := fixtures.available():
        pytest.skip(why)
    root = tmp_path_factory.mktemp("bundles")
    cache: dict = {}
    out = {
        f"r{i}": fixtures.make_bundle(root / f"r{i}", run_id=f"r{i}", seed=i, provenance_cache=cache) for i in range(3)
    }
    for tamper in ("metric", "step_times", "step_times_consistent", "baseline_hash", "pickle"):  # pickle: 422
        out[tamper] = fixtures.make_bundle(
            root / tamper, run_id=f"t-{tamper}", seed=9, tamper=tamper, provenance_cache=cache
        )
    return out


@dataclass
class Env:
    client: TestClient
    settings: object
    admin: str
    alice: str
    bob: str

    def auth(self, token: str) -> dict:
        return {"Authorization": f"Bearer {token}"}


def make_env(tmp_path: Path, db_url: str, **overrides) -> Env:
    settings = fixtures.server_settings(tmp_path, database_url=db_url, **overrides)
    client = TestClient(create_app(settings))
    admin = create_token("admin", True, settings=settings)
    alice = create_token("alice", settings=settings)
    bob = create_token("bob", settings=settings)
    return Env(client, settings, admin, alice, bob)


@pytest.fixture
def env(tmp_path, db_url) -> Env:
    return make_env(tmp_path, db_url)


def upload(env: Env, paths: dict[str, Path], token: str | None, *, tar: bool = False, **form):
    headers = env.auth(token) if token else {}
    if tar:
        return env.client.post(
            "/api/runs", files={"bundle": ("b.tar.gz", tarball(paths), "application/gzip")}, data=form, headers=headers
        )
    files = {FIELD[name]: (name, path.read_bytes()) for name, path in paths.items()}
    return env.client.post("/api/runs", files=files, data=form, headers=headers)


def tarball(paths: dict[str, Path], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, path in paths.items():
            tar.add(path, arcname=name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def edited(paths: dict[str, Path], tmp_path: Path, edit, name: str = "record.json") -> dict[str, Path]:
    """A copy of a bundle whose `name` (JSON) was changed by edit(obj)."""
    out = dict(paths)
    obj = json.loads(paths[name].read_text())
    edit(obj)
    out[name] = tmp_path / f"edited-{name}"
    out[name].write_text(json.dumps(obj))
    return out


# ------------------------------------------------------------------ reads


def test_tracks_are_listed_with_the_test_track(env):
    r = env.client.get("/api/tracks")
    assert r.status_code == 200
    names = {t["name"] for t in r.json()}
    assert {"golden", "cpu-books", "gpt2"} <= names
    golden = env.client.get("/api/tracks/golden").json()
    assert (
        golden["metric"] == "val_bpb"
        and golden["threshold"] == fixtures.THRESHOLD
        and golden["hardware"] == "CPU, 2 threads"
    )


def test_unknown_things_are_404(env):
    for path in (
        "/api/tracks/nope",
        "/api/tracks/nope/leaderboard",
        "/api/tracks/nope/records",
        "/api/runs/nope",
        "/api/runs/nope/files/record.json",
        "/api/submissions/12345",
        "/tracks/nope",
        "/runs/nope",
    ):
        r = env.client.get(path)
        assert r.status_code == 404, path
        assert "detail" in r.json()


# ------------------------------------------------------------------ auth


def test_upload_needs_a_valid_token(env, golden_bundles):
    r = upload(env, golden_bundles["r0"], None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert upload(env, golden_bundles["r0"], "sr_not-a-token").status_code == 401


def test_admin_routes_are_for_admins(env):
    body = {"name": "carol"}
    assert env.client.post("/api/admin/tokens", json=body).status_code == 401
    r = env.client.post("/api/admin/tokens", json=body, headers=env.auth(env.alice))
    assert r.status_code == 403 and "not an admin" in r.json()["detail"]
    r = env.client.post("/api/admin/tokens", json=body, headers=env.auth(env.admin))
    assert r.status_code == 201
    token = r.json()["token"]
    assert env.client.get("/api/me", headers=env.auth(token)).json()["name"] == "carol"
    assert env.client.post("/api/admin/runs/nope/reverify", headers=env.auth(env.admin)).status_code == 404
    assert (
        env.client.post("/api/admin/tokens", json={"name": "bad name!"}, headers=env.auth(env.admin)).status_code == 422
    )


def test_tokens_are_stored_only_as_hashes(env):
    from sqlmodel import Session, select

    from leaderboard.models import ApiToken

    with Session(env.client.app.state.engine) as session:
        stored = [t.token_sha256 for t in session.exec(select(ApiToken)).all()]
    assert env.alice not in stored and all(len(h) == 64 for h in stored)


# ------------------------------------------------------------------ upload


def test_upload_then_same_bundle_again_is_one_run(env, golden_bundles):
    r = upload(env, golden_bundles["r0"], env.alice, description="the baseline", link="https://example.org/pr/1")
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["run_id"] == "r0" and run["verification"] == "pending" and run["submitter"] == "alice"
    again = upload(env, golden_bundles["r0"], env.alice, tar=True)  # packed differently, same files
    assert again.status_code == 200 and again.json()["run_id"] == "r0"
    assert len(env.client.get("/api/runs").json()) == 1
    subs = env.client.get("/api/submissions").json()
    assert subs[0]["n_runs"] == 1 and subs[0]["link"] == "https://example.org/pr/1"
    detail = env.client.get("/api/runs/r0").json()
    assert detail["record"]["run_id"] == "r0" and set(detail["files"]) >= {"record.json", "model.safetensors"}
    log = env.client.get("/api/runs/r0/files/train.log", headers=env.auth(env.alice))  # the owner may, before
    assert log.status_code == 200 and "test fixture r0" in log.text


def test_a_run_is_never_overwritten(env, golden_bundles, tmp_path):
    assert upload(env, golden_bundles["r0"], env.alice).status_code == 201
    other = edited(golden_bundles["r0"], tmp_path, lambda rec: rec.update(seed=123))
    r = upload(env, other, env.alice)
    assert r.status_code == 409 and "never overwritten" in r.json()["detail"]
    r = upload(env, golden_bundles["r0"], env.bob)  # the same files from someone else
    assert r.status_code == 409 and "another submitter" in r.json()["detail"]
    assert env.client.get("/api/runs/r0").json()["seed"] == 0


def test_schema_violations_are_422(env, golden_bundles, tmp_path):
    b = golden_bundles["r1"]
    cases = {
        "schema version": edited(b, tmp_path, lambda rec: rec.update(schema_version=2)),
        "status": edited(b, tmp_path, lambda rec: rec.update(status="failed")),
        "unknown track": edited(b, tmp_path, lambda rec: rec["track"].update(name="no-such-track")),
        "train time type": edited(b, tmp_path, lambda rec: rec["timing"].update(train_time_s="fast")),
        "meta": edited(b, tmp_path, lambda meta: meta.pop("model_config"), name="meta.json"),
    }
    for why, paths in cases.items():
        r = upload(env, paths, env.alice)
        assert r.status_code == 422, (why, r.text)
    nan = dict(b)
    nan["record.json"] = tmp_path / "nan.json"
    nan["record.json"].write_text(
        b["record.json"].read_text().replace('"train_time_s": ', '"train_time_s": NaN, "x": ', 1)
    )
    assert upload(env, nan, env.alice).status_code == 422
    missing = {k: v for k, v in b.items() if k != "events.jsonl"}
    r = upload(env, missing, env.alice)
    assert r.status_code == 422 and "events.jsonl" in r.json()["detail"]
    r = env.client.post("/api/runs", files={"bundle": ("b.tar.gz", b"not a tarball")}, headers=env.auth(env.alice))
    assert r.status_code == 422
    r = env.client.post(
        "/api/runs", files={"bundle": ("b.tar.gz", tarball(b, {"../evil": b"x"}))}, headers=env.auth(env.alice)
    )
    assert r.status_code == 422 and "unexpected member" in r.json()["detail"]
    r = upload(env, b, env.alice, link="javascript:alert(1)")
    assert r.status_code == 422
    assert env.client.get("/api/runs").json() == []


def test_uploads_over_the_limits_are_413(tmp_path, golden_bundles):
    env = make_env(
        tmp_path, f"sqlite:///{tmp_path / 'lb.db'}", max_upload_bytes=1_000_000, max_file_bytes={"record.json": 1000}
    )
    r = upload(env, golden_bundles["r0"], env.alice)  # the 11 MB model: Content-Length says so at once
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    small = {k: v for k, v in golden_bundles["r0"].items() if k != "model.safetensors"}
    r = upload(env, small, env.alice)  # record.json is over its own limit
    assert r.status_code == 413 and "record.json" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while the body streams
        yield b'--x\r\nContent-Disposition: form-data; name="bundle"; filename="b.tar.gz"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 50_000

    r = env.client.post(
        "/api/runs",
        content=chunks(),
        headers={**env.auth(env.alice), "content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 413


def test_runs_list_filters(env, golden_bundles):
    for name in ("r0", "r1"):
        assert upload(env, golden_bundles[name], env.alice).status_code == 201
    assert upload(env, golden_bundles["metric"], env.bob).status_code == 201
    assert len(env.client.get("/api/runs", params={"track": "golden"}).json()) == 3
    assert env.client.get("/api/runs", params={"track": "nope"}).status_code == 404
    assert len(env.client.get("/api/runs", params={"verification": "pending", "limit": 2}).json()) == 2
    assert env.client.get("/api/runs", params={"verification": "maybe"}).status_code == 422
    assert env.client.get("/api/runs", params={"limit": 500}).status_code == 422  # capped: pages are keyset
    first = env.client.get("/api/runs", params={"limit": 2})
    rest = env.client.get("/api/runs", params={"limit": 2, "cursor": first.headers["x-next-cursor"]})
    assert [r["run_id"] for r in first.json() + rest.json()] == ["t-metric", "r1", "r0"]
    assert "x-next-cursor" not in rest.headers
    board = env.client.get("/api/tracks/golden/leaderboard").json()
    assert len(board) == 2 and all(s["rank"] is None for s in board)  # nothing verified yet: nothing ranks


def test_submit_packs_a_run_directory_and_uploads_it(env, golden_bundles, tmp_path, monkeypatch):
    import shutil

    from harness import submit as client

    run_dir = tmp_path / "runs" / "r2"
    checkpoint = run_dir / "checkpoints" / "step_000020"
    checkpoint.mkdir(parents=True)
    for name, path in golden_bundles["r2"].items():
        shutil.copy(path, (checkpoint if name in ("model.safetensors", "meta.json") else run_dir) / name)
    monkeypatch.setattr(
        client.requests,
        "post",
        lambda url, **kw: env.client.post(
            url.removeprefix("http://lb"), headers=kw["headers"], files=kw["files"], data=kw["data"]
        ),
    )
    (run,) = client.submit([run_dir], "http://lb", env.alice, description="packed by submit")
    assert run["run_id"] == "r2" and run["verification"] == "pending"
    files = env.client.get("/api/runs/r2").json()["files"]
    assert set(files) == set(golden_bundles["r2"])  # the final checkpoint's weights and meta came along
    assert client.submit([run_dir], "http://lb", env.alice)[0]["run_id"] == "r2"  # again: 200, the same run
    with pytest.raises(client.SubmitError, match="401"):
        client.submit([run_dir], "http://lb", "sr_wrong")


def test_board_reads_carry_an_etag_and_answer_a_repeat_with_304(tmp_path, golden_bundles):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}", cache_ttl_s=60.0)
    assert upload(env, golden_bundles["r0"], env.alice).status_code == 201
    for path in (
        "/api/tracks/golden/leaderboard",
        "/tracks/golden",
        "/api/runs?track=golden",
        "/api/runs/r0",
        "/runs/r0",
    ):
        first = env.client.get(path)
        etag = first.headers["etag"]
        assert first.status_code == 200 and first.headers["cache-control"] == "public, max-age=60", path
        again = env.client.get(path, headers={"If-None-Match": etag})  # answered by ServeCached, before routing
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag, path
        assert env.client.get(path).content == first.content
    assert upload(env, golden_bundles["r1"], env.alice).status_code == 201  # a write clears the cache
    assert len(env.client.get("/api/runs?track=golden").json()) == 2
