"""The server verifies an open-division run: its model runs only in the sandbox, the server scores its logits.

On the tiny open run of tests/test_open_division.py (`speedrun new --open`'s model): uploaded and verified
with the score the run claims; then variants of its source, each uploaded with the record's hash of the
edited files (the record is the submitter's), that a server must reject: logits of the wrong dtype, a
model its checkpoint does not fit, noise in the eval, a peek at the next token, a connection, and a model
that forges its own loss (in-process it would fool the eval; here the server's cross-entropy is its own).
A submission whose import leaves a marker file shows the server process never imports it: the marker is
in the sandbox's work dir only, and no module of the bundle's source is in this process's sys.modules.
Without bubblewrap, an open run stays pending with the fix named.
"""

import io
import json
import re
import sys
import tarfile
import tempfile
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

import sandbox
from harness.submit import pack
from leaderboard import open_metric
from leaderboard.app import create_app
from leaderboard.checks import ServerFacts, judge_open_score
from leaderboard.settings import Settings, TrackResources
from leaderboard.tokens import create_token
from leaderboard.verifier import verify_worker
from protocol.hashing import folder_or_file_hash
from protocol.record import read_spec
from protocol.source import SOURCE_FILE, pack_source
from tests.conftest import PRETRAIN
from tests.test_harness import cache  # noqa: F401 -- the tokenizer cache fixture
from tests.test_open_division import WRAPPED, open_run  # noqa: F401 -- open_run: the tiny open run (seed 5)

needs_sandbox = pytest.mark.skipif(sandbox.available() is not None, reason=str(sandbox.available()))


def server(open_run, directory: Path, track_file: Path | None = None, **overrides) -> SimpleNamespace:  # noqa: F811
    _, run_dir, record = open_run
    spec = read_spec(run_dir)
    track_file = track_file or next(run_dir.parent.parent.glob("*.toml"))
    settings = Settings(
        database_url=f"sqlite:///{directory / 'lb.db'}",
        storage_dir=directory / "storage",
        track_files=[track_file],
        track_resources={
            record.track.name: TrackResources(data_dir=PRETRAIN, tokenizer_dir=spec.path(run_dir, "tokenizer_dir"))
        },
        **{"cache_ttl_s": 0.0, "retry_after_s": 0.0, "verify_threads": 2, **overrides},
    )  # fmt: skip
    client = TestClient(create_app(settings))
    return SimpleNamespace(client=client, settings=settings, token=create_token("olive", settings=settings))


def rebundle(run_dir: Path, tmp_path: Path, extra: str = "", claim: float | None = None) -> bytes:
    """The run's bundle with `extra` appended to its submission.py, the record naming the edited files' hash."""
    source = tmp_path / "edited" / "open_baseline"
    source.parent.mkdir(parents=True)
    original = run_dir / "source" / "open_baseline"
    source.mkdir()
    for f in original.iterdir():
        if f.is_file():
            (source / f.name).write_bytes(f.read_bytes())
    (source / "submission.py").write_text((source / "submission.py").read_text() + textwrap.dedent(extra))
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(pack(run_dir))) as old, tarfile.open(fileobj=out, mode="w:gz") as new:
        for member in old:
            data = old.extractfile(member).read()
            if member.name == SOURCE_FILE:
                data = pack_source(source)
            elif member.name == "record.json":
                record = json.loads(data)
                record["submission"]["hash"] = record["provenance"]["submission"]["hash"] = folder_or_file_hash(source)
                if claim is not None:
                    record["result"]["val_bpb"] = record["result"]["value"] = claim
                data = json.dumps(record).encode()
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return out.getvalue()


def upload(srv, bundle: bytes):
    return srv.client.post(
        "/api/runs",
        headers={"Authorization": f"Bearer {srv.token}"},
        files={"bundle": ("bundle.tar.gz", bundle, "application/gzip")},
    )


def upload_and_verify(srv, bundle: bytes) -> dict:
    r = upload(srv, bundle)
    assert r.status_code == 201, r.text
    verify_worker(once=True, settings=srv.settings, poll_s=0)
    return srv.client.get(f"/api/runs/{r.json()['run_id']}").json()


def checks_of(run: dict) -> dict[str, dict]:
    return {c["name"]: c for c in run["checks"]}


@needs_sandbox
def test_an_open_run_verifies_with_its_model_scored_in_the_sandbox(open_run, tmp_path):  # noqa: F811
    _, run_dir, record = open_run
    run = upload_and_verify(server(open_run, tmp_path), pack(run_dir))
    assert run["verification"] == "verified", run["verification_detail"]
    checks = checks_of(run)
    assert checks["val_bpb"]["outcome"] == "pass" and checks["val_bpb"]["evidence"]["recomputed"] == pytest.approx(
        record.result.val_bpb, abs=1e-9
    )
    assert "its code loads them, sandboxed" in checks["weights"]["detail"]
    print(f"open run verified; the sandboxed score took {checks['val_bpb']['evidence']['seconds']:.1f} s")


# Each variant is the honest model with one thing added (tests/test_open_division.py's WRAPPED wraps its forward).
UNLOADABLE = """
def build_model(plan, device, compute_dtype):
    model = build_baseline_gpt(plan.model_config, device, compute_dtype)
    model.extra = __import__("torch").nn.Parameter(__import__("torch").zeros(3))
    return model
"""
# In the model's own process this would fool the eval: every cross-entropy of the process is near 0.
FORGES_ITS_LOSS = """
import torch.nn.functional as _F

_real_ce = _F.cross_entropy
_F.cross_entropy = lambda *a, **k: _real_ce(*a, **k) * 0.01
print('{"bpb": 0.01}')
"""


@needs_sandbox
@pytest.mark.parametrize(
    "extra, claim, check, match",
    [
        (WRAPPED.format(action="out = out.double()"), None, "metric", "not float32 logits"),
        (UNLOADABLE, None, "metric", "could not be built .*extra"),
        (WRAPPED.format(action="out = out + 0.1 * __import__('torch').randn_like(out)"), None, "metric",
         "score up to .* nats apart in two passes"),
        (WRAPPED.format(action="out[:, :-1] += 30 * __import__('torch').nn.functional.one_hot(idx[:, 1:], "
                        "out.size(-1))"), None, "metric", "sees later tokens"),
        (WRAPPED.format(action="__import__('socket').create_connection(('127.0.0.1', 5432), timeout=1)"), None,
         "metric", "process ended failed .*(OSError|ConnectionRefused|unreachable)"),
        (FORGES_ITS_LOSS, 0.01, "val_bpb", r"val_bpb claimed 0.01, recomputed \d"),
    ],
    ids=["float64-logits", "unloadable", "nondeterministic", "peeks", "connects", "forges-its-loss"],
)  # fmt: skip
def test_the_server_rejects_an_open_model_that(open_run, tmp_path, extra, claim, check, match):  # noqa: F811
    run = upload_and_verify(server(open_run, tmp_path), rebundle(open_run[1], tmp_path, extra, claim))
    assert run["verification"] == "rejected", run["verification_detail"]
    detail = checks_of(run)[check]["detail"]
    assert re.search(match, detail) and "\n" not in detail, detail


MARKER = """
import os as _os
import tempfile as _tempfile
from pathlib import Path as _Path

for _where in (_Path.cwd(), _Path.home(), _Path(_tempfile.gettempdir())):
    try:
        (_where / "{name}").write_text(str(_os.getpid()))
    except OSError:
        pass
"""


@needs_sandbox
def test_the_server_process_never_imports_an_open_submission(open_run, tmp_path):  # noqa: F811
    name = f"marker-{uuid.uuid4().hex}"
    srv = server(open_run, tmp_path)
    run = upload_and_verify(srv, rebundle(open_run[1], tmp_path, MARKER.format(name=name)))
    assert run["verification"] == "verified", run["verification_detail"]
    storage = srv.settings.storage_dir.resolve()
    inside = sorted(p.relative_to(storage).parts[0] for p in storage.rglob(name))
    assert inside == [open_metric.WORK_DIR, open_metric.WORK_DIR], inside  # each pass's cwd: its work dir
    for where in (Path.cwd(), Path.home(), Path(tempfile.gettempdir())):
        assert not (where / name).exists(), f"the submission ran in the server process: {where / name}"
    loaded = [m.__name__ for m in list(sys.modules.values()) if str(storage) in str(getattr(m, "__file__", ""))]
    assert loaded == [] and not any("open_baseline" in m for m in sys.modules), loaded


def test_without_the_sandbox_an_open_run_stays_pending_with_the_fix_named(open_run, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sandbox, "available", lambda: "bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    srv = server(open_run, tmp_path, retry_after_s=3600.0)  # one attempt: retried later, then an admin's
    run = upload_and_verify(srv, pack(open_run[1]))
    assert run["verification"] == "pending", run["verification_detail"]
    assert "runs only in the sandbox" in run["verification_detail"]["error"]
    assert "apt-get install bubblewrap" in run["verification_detail"]["error"]
    assert not (srv.settings.storage_dir / open_metric.WORK_DIR).exists()  # nothing of it ran


def test_an_open_score_is_judged_against_the_claims():
    """The server's own numbers against the record: a problem rejects, a held-out gap flags, a match passes."""
    record = SimpleNamespace(result=SimpleNamespace(val_bpb=2.0, value=2.0))
    facts = ServerFacts(code_hashes={}, frozen_packages=(), tokenizer_dir=None, tokenizer_hash=None, data_dir=None,
                        data_hash=None, eval_bundle=None, eval_tokens=2048, heldout_gap_bpb=0.05)  # fmt: skip
    scored = {"bpb": 2.0001, "total_bytes": 9000, "problem": None, "heldout": {"bpb": 2.2}, "seconds": 1.0}
    results, recomputed = judge_open_score(record, scored, facts)
    assert [(r.name, r.outcome) for r in results] == [("val_bpb", "pass"), ("heldout", "flag")]
    assert recomputed == {"val_bpb": 2.0001, "heldout_bpb": 2.2}
    results, _ = judge_open_score(record, scored | {"bpb": 1.9, "heldout": {"bpb": 1.9}}, facts)
    assert [(r.name, r.outcome) for r in results] == [("val_bpb", "fail"), ("metric", "fail"), ("heldout", "pass")]
    results, recomputed = judge_open_score(record, scored | {"bpb": None, "problem": "it peeks"}, facts)
    assert [(r.name, r.outcome) for r in results] == [("metric", "fail")] and "it peeks" in results[0].detail


def test_each_division_is_a_board_of_its_own(open_run, tmp_path):  # noqa: F811
    srv = server(open_run, tmp_path)
    assert upload(srv, pack(open_run[1])).status_code == 201
    track = open_run[2].track.name
    board = srv.client.get(f"/api/tracks/{track}/leaderboard")
    assert board.status_code == 200 and board.json() == []  # closed by default: no open submission on it
    [row] = srv.client.get(f"/api/tracks/{track}/leaderboard", params={"division": "open"}).json()
    assert row["submission"] == "open_baseline" and row["division"] == "open"
    assert srv.client.get(f"/api/tracks/{track}/records", params={"division": "open"}).json() == []
    assert srv.client.get(f"/api/tracks/{track}/leaderboard", params={"division": "mixed"}).status_code == 422
    page = srv.client.get(f"/tracks/{track}").text
    assert page.index('id="board"') < page.index('id="board-open"') and "open division" in page
    assert page.index("open_baseline") > page.index('id="board-open"')  # on the open board only


def test_a_track_that_ranks_the_closed_division_only_refuses_an_open_run(open_run, tmp_path):  # noqa: F811
    track_file = next(open_run[1].parent.parent.glob("*.toml"))
    closed_only = tmp_path / track_file.name
    closed_only.write_text(track_file.read_text().replace('divisions = ["closed", "open"]', ""))
    srv = server(open_run, tmp_path, closed_only)
    r = upload(srv, pack(open_run[1]))
    assert r.status_code == 422 and "ranks the closed division only" in r.json()["detail"], r.text
    track = open_run[2].track.name
    assert srv.client.get(f"/api/tracks/{track}/leaderboard", params={"division": "open"}).status_code == 404
