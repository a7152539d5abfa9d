"""Chat tuning: the chat format and its loss mask, a short tune of the golden model, the resumable download."""

import hashlib
import http.server
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from safetensors.torch import load_file

import harness.chat_tune
import speedrun
from baseline.checkpoint import build_model, load_state_into, read_meta, save_checkpoint
from baseline.engine import render_conversation, render_for_reply
from baseline.gpt import GPTConfig
from baseline.tokenizer import Tokenizer
from harness.chat_tune import (
    CPU_CONFIG,
    ChatTuneConfig,
    chat_tune,
    default_config,
    download,
    fetch_chat_data,
    make_batch,
    read_conversations,
)
from protocol.hashing import tree_hash
from protocol.record import read_record, write_record
from tests.conftest import DATA, GOLDEN, minimal_record
from tests.test_gpt import GOLDEN_CONFIG

CONVO = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Red."},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread


@pytest.fixture(scope="module")
def tokenizer(golden):
    return Tokenizer.load(golden / "tokenizer")


def test_a_conversation_renders_with_special_tokens_and_masks_all_but_the_assistant(tokenizer):
    s = tokenizer.encode_special
    ids, mask = render_conversation(tokenizer, CONVO)
    enc = tokenizer.encode
    expected = (
        [tokenizer.bos_id, s("<|user_start|>"), *enc("Name a colour."), s("<|user_end|>")]
        + [s("<|assistant_start|>"), *enc("Blue."), s("<|assistant_end|>")]
        + [s("<|user_start|>"), *enc("Another?"), s("<|user_end|>")]
        + [s("<|assistant_start|>"), *enc("Red."), s("<|assistant_end|>")]
    )
    assert ids == expected
    spoken = [t for t, m in zip(ids, mask, strict=True) if m]
    assert spoken == [*enc("Blue."), s("<|assistant_end|>"), *enc("Red."), s("<|assistant_end|>")]
    second_user_end = [i for i, t in enumerate(ids) if t == s("<|user_end|>")][1]
    assert render_for_reply(tokenizer, CONVO[:3]) == ids[: second_user_end + 1] + [s("<|assistant_start|>")]
    system = [{"role": "system", "content": "Be brief."}, *CONVO[:2]]
    merged = [{"role": "user", "content": "Be brief.\n\nName a colour."}, CONVO[1]]
    assert render_conversation(tokenizer, system) == render_conversation(tokenizer, merged)
    assert render_conversation(tokenizer, CONVO, max_tokens=5) == (ids[:5], mask[:5])


def test_batch_targets_are_minus_one_except_where_the_assistant_speaks(tokenizer):
    short = CONVO[:2]
    x, y = make_batch([CONVO, short], tokenizer, seq_len=64)
    ids, mask = render_conversation(tokenizer, CONVO)
    assert x.shape == y.shape == (2, len(ids) - 1)
    assert x[0].tolist() == ids[:-1]
    assert y[0].tolist() == [t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)]
    n_short = len(render_conversation(tokenizer, short)[0]) - 1
    assert (y[1, n_short:] == -1).all() and (x[1, n_short:] == tokenizer.bos_id).all()  # padding
    x, y = make_batch([CONVO], tokenizer, seq_len=6)
    assert x.shape == (1, 6) and (y == -1).all()  # cut inside the first user turn: nothing to learn


@pytest.fixture
def base_run(tmp_path, golden) -> Path:
    """A completed run whose final checkpoint is the golden model after 6 training steps."""
    run = tmp_path / "runs" / "base1"
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    load_state_into(model, load_file(golden / "optim" / "state_step6.safetensors"))
    save_checkpoint(
        run / "checkpoints", 6, model, None, {"tokenizer_hash": tree_hash(golden / "tokenizer", include=("*",))}
    )
    record = minimal_record(
        "base1", result={"metric": "val_bpb", "value": 6.3}, files={"checkpoint": "checkpoints/step_000006"}
    )
    write_record(run, record)
    return run


@pytest.fixture
def chat_data(tmp_path) -> Path:
    src = DATA / "chat"
    if not (src / "train.jsonl").is_file():
        pytest.skip(f"no chat data at {src} (set SPEEDRUN_SHARED)")
    out = tmp_path / "chat"
    out.mkdir()
    for split, n in (("train", 160), ("val", 16)):
        lines = (src / f"{split}.jsonl").read_text().splitlines(keepends=True)[:n]
        (out / f"{split}.jsonl").write_text("".join(lines))
    return out


def test_a_short_tune_lowers_the_assistant_loss_and_writes_a_child_run(base_run, chat_data, tmp_path):
    from leaderboard.chat import chat_checkpoint

    config = ChatTuneConfig(steps=6, batch_size=8, seq_len=128, eval_conversations=16)
    child = chat_tune(
        base_run, data_dir=chat_data, tokenizer_dir=GOLDEN / "tokenizer", config=config, log=lambda *_: None
    )
    record = read_record(child)
    assert child.parent == base_run.parent and record.parent_run_id == "base1"
    assert record.status == "completed" and record.official is False and record.chat_tune.steps == 6
    info = record.chat_tune
    assert info.val_loss_after < info.val_loss_before - 0.5, info
    assert info.parent_checkpoint == "checkpoints/step_000006"  # relative to the parent's run dir
    ckpt = child / record.files.checkpoint
    assert read_meta(ckpt)["chat_tuned"] is True and read_meta(ckpt)["parent_run_id"] == "base1"
    events = [json.loads(line) for line in (child / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == list(range(6))
    assert chat_checkpoint(base_run.parent, "base1") == ckpt  # what the leaderboard serves in chat style


def test_a_short_tune_tokenizes_only_the_conversations_it_draws(base_run, tmp_path, monkeypatch):
    src = DATA / "chat"
    if not (src / "train.jsonl").is_file():
        pytest.skip(f"no chat data at {src} (set SPEEDRUN_SHARED)")
    rendered = []

    def counting(tokenizer, messages, **kwargs):
        rendered.append(messages)
        return render_conversation(tokenizer, messages, **kwargs)

    monkeypatch.setattr(harness.chat_tune, "render_conversation", counting)
    config = ChatTuneConfig(steps=3, batch_size=4, seq_len=128, eval_conversations=8)
    chat_tune(base_run, data_dir=src, tokenizer_dir=GOLDEN / "tokenizer", config=config, log=lambda *_: None)
    n_train = len((src / "train.jsonl").read_text().splitlines())
    assert n_train > 10_000 and len(rendered) < 200, len(rendered)  # not every conversation up front


def test_chat_tune_defaults_to_a_short_tune_on_a_cpu(base_run, monkeypatch):
    assert default_config("cpu") == CPU_CONFIG and default_config("cuda") == ChatTuneConfig()
    # ~80 k tokens: under two minutes for the cpu-books model on 2 cores (~3.5 k tokens/s when not shared)
    assert CPU_CONFIG.steps * CPU_CONFIG.batch_size * CPU_CONFIG.seq_len <= 100_000
    seen = []
    monkeypatch.setattr("harness.cli.chat_tune", lambda run, *, config, **_: seen.append(config) or run)
    speedrun.main(["chat-tune", str(base_run)])
    speedrun.main(["chat-tune", str(base_run), "--steps", "5"])
    speedrun.main(["chat-tune", str(base_run), "--device", "cuda"])
    assert seen == [CPU_CONFIG, replace(CPU_CONFIG, steps=5), ChatTuneConfig()]


def test_chat_tune_says_what_is_missing(base_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="train.jsonl not found"):
        chat_tune(base_run, data_dir=tmp_path / "nowhere")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match="alternating from user"):
        read_conversations(bad)


# ------------------------------------------------------------------ download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payload` with Range support; drops the first connection after `drop_after` bytes."""

    payload = b""
    drop_after: int | None = None
    honour_range = True
    requests_seen: list = []

    def do_GET(self):  # noqa: N802 -- http.server's name
        cls = type(self)
        cls.requests_seen.append(self.headers.get("Range"))
        start = 0
        if cls.honour_range and (rng := self.headers.get("Range")):
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        body = cls.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drop_after is not None:
            self.wfile.write(body[: cls.drop_after])
            cls.drop_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.requests_seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def dolly_lines(n: int) -> bytes:
    rows = [
        {"instruction": f"Question {i}?", "context": "Some context." if i % 3 == 0 else "", "response": f"Answer {i}."}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_dropped_download_resumes_with_a_range_request_and_is_checked(server, tmp_path):
    payload = dolly_lines(40_000)  # ~3.4 MB: the first chunks land in the .part file before the drop
    assert len(payload) > 3 * 2**20
    digest = hashlib.sha256(payload).hexdigest()
    RangeHandler.payload, RangeHandler.drop_after, RangeHandler.honour_range = payload, 3 * 2**19, True
    dest = tmp_path / "dl" / "dolly.jsonl"
    with pytest.raises(requests.exceptions.RequestException):
        download(server + "/dolly.jsonl", dest, sha256=digest)
    part = dest.with_name("dolly.jsonl.part")
    have = part.stat().st_size
    assert 0 < have < len(payload)
    download(server + "/dolly.jsonl", dest, sha256=digest)
    assert dest.read_bytes() == payload and not part.exists()
    assert RangeHandler.requests_seen == [None, f"bytes={have}-"]
    download(server + "/dolly.jsonl", dest, sha256=digest)  # already there and intact: no request
    assert len(RangeHandler.requests_seen) == 2


def test_a_server_ignoring_range_restarts_and_a_wrong_checksum_deletes_the_file(server, tmp_path):
    payload = dolly_lines(50)
    RangeHandler.payload, RangeHandler.drop_after, RangeHandler.honour_range = payload, None, False
    dest = tmp_path / "d.jsonl"
    dest.with_name("d.jsonl.part").write_bytes(b"stale bytes")
    download(server + "/d.jsonl", dest, sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    with pytest.raises(ValueError, match="expected 0000"):
        download(server + "/d.jsonl", tmp_path / "e.jsonl", sha256="0" * 64)
    assert not (tmp_path / "e.jsonl").exists() and not (tmp_path / "e.jsonl.part").exists()


def test_fetch_converts_dolly_records_to_messages_and_splits_them(server, tmp_path):
    payload = dolly_lines(100) + dolly_lines(5)  # 5 duplicates
    RangeHandler.payload, RangeHandler.drop_after, RangeHandler.honour_range = payload, None, True
    counts = fetch_chat_data(tmp_path / "chat", url=server + "/dolly.jsonl", sha256=hashlib.sha256(payload).hexdigest())
    assert counts["train"] == 95 and counts["val"] == 5
    convos = read_conversations(tmp_path / "chat" / "train.jsonl") + read_conversations(tmp_path / "chat" / "val.jsonl")
    assert len(convos) == 100
    with_context = next(c for c in convos if c[0]["content"] == "Question 0?\n\nSome context.")
    assert with_context[1] == {"role": "assistant", "content": "Answer 0."}
    local = fetch_chat_data(tmp_path / "chat2", local_path=tmp_path / "chat" / "raw" / "dolly.jsonl")
    assert local["raw_sha256"] == counts["raw_sha256"]
    assert (tmp_path / "chat2" / "val.jsonl").read_text() == (tmp_path / "chat" / "val.jsonl").read_text()
