"""The chat serves the top open-division model too: its code runs only in a sandboxed process that returns logits.

On the tiny open run of tests/test_open_division.py (`speedrun new --open`'s model, the baseline's GPT built by
build_model), uploaded with a source that leaves a marker file when imported and dies on demand (a `die-at` file
in its work dir names a context length), and marked verified as the worker would. The same weights loaded into
baseline's GPT by frozen code are the reference: the sandboxed model's greedy and seeded replies equal it token
for token (this side samples), a closed model served beside it is untouched, and nothing of the submission is
imported here. Without bubblewrap the open model is not served and both /v1/models and a request say why.
"""

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session

import sandbox
from baseline.checkpoint import load_state_into, load_weights, read_meta
from baseline.engine import Engine
from baseline.gpt import GPT, GPTConfig
from harness.submit import pack
from leaderboard import crud, open_chat
from leaderboard.chat import ChatService, ChatSettings, local_served
from tests.test_chat_api import mark_verified, sse_chunks
from tests.test_harness import cache  # noqa: F401 -- the tokenizer cache fixture
from tests.test_open_division import open_run  # noqa: F401 -- the tiny open run (seed 5)
from tests.test_open_verification import MARKER, needs_sandbox, rebundle, server, upload

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread
HELLO = [{"role": "user", "content": "The capital of France is"}]
MARKER_NAME = f"marker-{uuid.uuid4().hex}"
# Dies (exit 3) once a forward's context reaches the length written in `die-at` in its cwd, removing the file
# first: the test decides when, and the restarted process (same work dir) lives on.
DIES_ON_DEMAND = """
import os as _os
from pathlib import Path as _Path

from baseline.gpt import GPT as _GPT


class DiesOnDemand(_GPT):
    def forward(self, idx, *args, **kwargs):
        at = _Path("die-at")
        if at.is_file() and idx.size(1) >= int(at.read_text()):
            at.unlink()
            _os._exit(3)
        return super().forward(idx, *args, **kwargs)


def build_model(plan, device, compute_dtype):
    return build_baseline_gpt(plan.model_config, device, compute_dtype, model_class=DiesOnDemand)
"""


@pytest.fixture(scope="module")
def board(open_run, tmp_path_factory):  # noqa: F811
    """A board whose open record is the marked, dying-on-demand variant (verified), served by a ChatService."""
    tmp = tmp_path_factory.mktemp("chat-open")
    srv = server(open_run, tmp)
    bundle = rebundle(open_run[1], tmp, MARKER.format(name=MARKER_NAME) + DIES_ON_DEMAND)
    r = upload(srv, bundle)
    assert r.status_code == 201, r.text
    srv.run_id = r.json()["run_id"]
    mark_verified(srv, srv.run_id)
    with Session(srv.client.app.state.engine) as session:
        sha = crud.get_run(session, run_id=srv.run_id).bundle_sha256
    srv.bundle_dir = srv.settings.storage_dir / "bundles" / sha
    srv.model_id = f"{open_run[2].track.name}-open"
    yield srv
    service = getattr(srv.client.app.state, "chat", None)
    if service is not None:
        service.close()


def serve(board, **limits) -> ChatService:
    """The board's ChatService (made once: its open model's process stays warm between tests)."""
    app = board.client.app
    if getattr(app.state, "chat", None) is None:
        app.state.chat = ChatService(ChatSettings(**limits), settings=board.settings, db=app.state.engine, poll=False)
        assert app.state.chat.refresh() is True, app.state.chat.last_error
    return app.state.chat


def reference(board) -> Engine:
    """The open checkpoint's weights in baseline's GPT, by frozen code: the model the submission builds."""
    model = GPT(GPTConfig(**read_meta(board.bundle_dir)["model_config"]))
    load_state_into(model, load_weights(board.bundle_dir))
    return Engine(model.eval(), serve(board).find(board.model_id).engine.tokenizer)


def ask_body(board, model: str | None = None, **extra) -> dict:
    return {"model": model or board.model_id, "messages": HELLO, "temperature": 0, "max_tokens": 16, **extra}


def ask(board, model: str, **extra):
    return board.client.post("/v1/chat/completions", json=ask_body(board, model, **extra))


@needs_sandbox
def test_the_open_model_streams_from_its_sandboxed_process_as_the_frozen_model_would(board):
    service = serve(board)
    [model] = board.client.get("/v1/models").json()["data"]
    assert model["id"] == board.model_id and model["division"] == "open" and model["run_id"] == board.run_id
    served = service.find(board.model_id)
    prompt = served.prompt_ids(HELLO)
    engine = reference(board)
    want = engine.tokenizer.decode(engine.generate_batch(prompt, 1, max_tokens=16, temperature=0)[0])
    with board.client.stream("POST", "/v1/chat/completions", json=ask_body(board, stream=True)) as r:
        assert r.status_code == 200, r.read()
        chunks = sse_chunks(r.read().decode())
    assert chunks[-1] == "[DONE]" and not any("error" in c for c in chunks[:-1]), chunks
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1] if c["choices"]]
    assert "".join(pieces) == want and len([p for p in pieces if p]) > 1  # streamed piece by piece
    seeded = {"temperature": 1.0, "top_k": 20, "seed": 7, "n": 2, "max_tokens": 12}
    texts = [c["message"]["content"] for c in ask(board, board.model_id, **seeded).json()["choices"]]
    rows = engine.generate_batch(prompt, 2, max_tokens=12, temperature=1.0, top_k=20, seed=7)
    assert texts == [engine.tokenizer.decode(row) for row in rows]  # this side samples, with the closed sampler
    print(f"open model: loaded in {served.engine.process.start_s:.2f} s (sandbox, python, torch, the model)")


@needs_sandbox
def test_the_server_process_never_imports_the_open_submission(board):
    serve(board)
    assert ask(board, board.model_id).status_code == 200
    storage = board.settings.storage_dir.resolve()
    found = [p.relative_to(storage) for p in storage.rglob(MARKER_NAME)]
    assert found and all(p.parts[0] == open_chat.WORK_DIR and "sandbox" in p.parts for p in found), found
    for where in (Path.cwd(), Path.home(), Path(tempfile.gettempdir())):
        assert not (where / MARKER_NAME).exists(), f"the submission ran in the server process: {where / MARKER_NAME}"
    loaded = [m.__name__ for m in list(sys.modules.values()) if str(storage) in str(getattr(m, "__file__", ""))]
    assert loaded == [] and not any("open_baseline" in m for m in sys.modules), loaded


@needs_sandbox
def test_the_model_process_dying_mid_stream_ends_it_cleanly_and_the_next_request_restarts_it(board):
    service = serve(board)
    process = service.find(board.model_id).engine.process
    prompt = service.find(board.model_id).prompt_ids(HELLO)
    starts = process.starts
    (process.sandbox_dir / "die-at").write_text(str(len(prompt) + 4))  # the 5th token's forward
    r = board.client.post("/v1/chat/completions", json=ask_body(board, stream=True))
    chunks = sse_chunks(r.text)
    assert r.status_code == 200 and chunks[-1] == "[DONE]"
    error = chunks[-2]["error"]
    assert error["code"] == 503 and "process ended" in error["message"] and "starts it again" in error["message"]
    assert "\n" not in error["message"] and any(c["choices"][0]["delta"].get("content") for c in chunks[1:-2])
    r = ask(board, board.model_id)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length", r.text
    assert process.starts == starts + 1
    (process.sandbox_dir / "die-at").write_text(str(len(prompt)))  # the first forward: not streaming
    r = ask(board, board.model_id)
    assert r.status_code == 503 and "process ended" in r.json()["detail"], r.text
    assert ask(board, board.model_id).status_code == 200 and process.starts == starts + 2


@needs_sandbox
def test_a_closed_model_is_served_beside_it_and_unaffected(board):
    service = serve(board)
    engine = reference(board)  # the same weights as a closed model: baseline's engine, KV cache
    track = board.model_id.removesuffix("-open")
    service.swap(local_served(engine.model, engine.tokenizer, name=track))
    try:
        ids = [m["id"] for m in board.client.get("/v1/models").json()["data"]]
        assert ids == [track, board.model_id]
        closed, opened = ask(board, track).json(), ask(board, board.model_id).json()
        assert closed["system_fingerprint"] == f"{track}:completion" and closed["model"] == track
        assert opened["system_fingerprint"] == f"{board.run_id}:completion"
        assert closed["choices"][0]["message"]["content"] == opened["choices"][0]["message"]["content"]
        service.find(board.model_id).engine.process.close()  # the open model's process gone: the closed one answers
        assert ask(board, track).json()["choices"] == closed["choices"]
        r = ask(board, "gpt-4")
        assert r.status_code == 404 and f"use '{track}' or '{board.model_id}'" in r.json()["detail"]
        page = board.client.get("/chat").text  # the closed model's, with a link to the open one
        assert f'data-model="{track}"' in page and f'href="/chat?model={board.model_id}"' in page
        page = board.client.get("/chat", params={"model": board.model_id}).text
        assert f'data-model="{board.model_id}"' in page and "Open division" in page
    finally:
        service.swap(None, "closed")


def test_without_the_sandbox_the_open_model_is_not_served_and_says_why(open_run, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(sandbox, "available", lambda: "bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    srv = server(open_run, tmp_path)
    r = upload(srv, pack(open_run[1]))
    assert r.status_code == 201, r.text
    mark_verified(srv, r.json()["run_id"])
    service = ChatService(ChatSettings(), settings=srv.settings, db=srv.client.app.state.engine, poll=False)
    srv.client.app.state.chat = service
    assert service.refresh() is False
    name = f"{open_run[2].track.name}-open"
    models = srv.client.get("/v1/models").json()
    assert models["data"] == [] and [u["id"] for u in models["unavailable"]] == [name]
    assert "runs only in the sandbox" in models["unavailable"][0]["reason"]
    r = srv.client.post("/v1/chat/completions", json={"model": name, "messages": HELLO})
    assert r.status_code == 503 and "apt-get install bubblewrap" in r.json()["detail"], r.text
    assert "\n" not in r.json()["detail"] and not (srv.settings.storage_dir / open_chat.WORK_DIR).exists()


def test_a_load_sweeps_the_work_dirs_of_ended_server_processes(tmp_path):
    """Each server process has its own work dir per served run: those of processes that ended go; a live
    process's (this one's, a sibling worker's) stay, as does anything not named <sha256>.<pid>."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    root = tmp_path / open_chat.WORK_DIR
    gone, live, other = root / f"{'a' * 64}.{ended.pid}", root / f"{'a' * 64}.{os.getpid()}", root / "notes.txt"
    for d in (gone, live, other):
        (d / "model").mkdir(parents=True)
    assert open_chat.sweep_ended(tmp_path) == [gone]
    assert not gone.exists() and live.is_dir() and other.is_dir()
