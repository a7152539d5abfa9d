"""Chat tuning: a short supervised fine-tune that turns a base run into a chat model, written as a child run.

    speedrun chat-tune RUN [--data-dir ../shared/data/chat] [--steps 40]    # chat_tune(run_dir, ...)
    speedrun data chat --out DIR [--url URL | --local-path FILE]            # fetch_chat_data(DIR, ...)

Data: `train.jsonl` / `val.jsonl` of `{"messages": [{"role": "user"|"assistant", "content": ...}, ...]}`
(../shared/data/chat holds databricks-dolly-15k in this form). Each conversation is rendered with the
tokenizer's special tokens (`baseline.engine.render_conversation`: <|bos|><|user_start|>…<|user_end|>
<|assistant_start|>…<|assistant_end|>) and the loss is taken on assistant tokens only (the others get
target -1). The optimizer is the baseline's MuonAdamW at `lr_frac` of the base learning rates, no
weight decay, decayed linearly to 0 (as nanochat's chat_sft). Untimed. Conversations are drawn in a
seeded random order and tokenized only when drawn. On a GPU the defaults are nanochat-sized (300 steps
of 16 conversations); on a CPU they are `CPU_CONFIG`, a tune of under two minutes on 2 cores.

The result is a child run `<runs_dir>/<parent>-chat-<UTC time>/`: record.json (the parent's record
with `parent_run_id`, `chat_tune` and the val assistant loss before/after; official false),
events.jsonl, and checkpoints/step_N/ whose meta says `chat_tuned: true`. The leaderboard serves such
a child of its top run in chat style (leaderboard/chat.py, LEADERBOARD_CHAT_RUNS_DIR).

`fetch_chat_data` is the real download of a public conversation set (databricks-dolly-15k's JSONL from
the Hugging Face Hub by default): resumable (HTTP Range on a `.part` file), checked against a sha256,
or taken from a local path; then converted to the messages format and split like shared/data/chat.
"""

import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from baseline.checkpoint import latest_checkpoint, load_model, save_checkpoint
from baseline.config import TrainConfig
from baseline.device import compute_dtype
from baseline.download import transfer
from baseline.engine import render_conversation
from baseline.optim import MuonAdamW, build_param_groups
from protocol.hashing import file_sha256
from protocol.record import ChatTune, Files, RunRecord, now_iso, read_record, write_record

DOLLY_URL = "https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "chat"


@dataclass
class ChatTuneConfig:
    steps: int = 300
    batch_size: int = 16  # conversations per step
    seq_len: int | None = None  # None: the model's sequence_len (longer conversations are cut)
    lr_frac: float = 0.1  # of the base run's default learning rates
    seed: int = 0
    eval_conversations: int = 64  # of val.jsonl, for the assistant loss before and after


# A CPU tune: ~80 k tokens instead of ~2.5 M, under two minutes for the cpu-books d4 model on 2 cores
# (~3.5 k tokens/s); short answers are what such a model can learn anyway.
CPU_CONFIG = ChatTuneConfig(steps=40, batch_size=8, seq_len=256, eval_conversations=32)


def default_config(device: str) -> ChatTuneConfig:
    return CPU_CONFIG if torch.device(device).type == "cpu" else ChatTuneConfig()


# ------------------------------------------------------------------ data


def read_conversations(path: str | Path) -> list[list[dict]]:
    """The `messages` of each line of a jsonl file, checked: user/assistant turns alternating from user."""
    out = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        messages = json.loads(line).get("messages")
        roles = [m.get("role") for m in messages or []]
        if not roles or roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]):
            raise ValueError(f"{path}:{line_no}: expected user/assistant turns alternating from user, got {roles}")
        out.append(messages)
    return out


def make_batch(conversations: list[list[dict]], tokenizer, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs, targets (B, T) with T <= seq_len: targets are -1 except where the model must speak
    (assistant content and its <|assistant_end|>); padding is <|bos|> in, -1 out."""
    rows = []
    for messages in conversations:
        ids, mask = render_conversation(tokenizer, messages, max_tokens=seq_len + 1)
        rows.append((ids[:-1], [t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)]))
    width = max(len(x) for x, _ in rows)
    bos = tokenizer.bos_id
    inputs = torch.tensor([x + [bos] * (width - len(x)) for x, _ in rows], dtype=torch.long)
    targets = torch.tensor([y + [-1] * (width - len(y)) for _, y in rows], dtype=torch.long)
    return inputs, targets


def trainable(conversations: Iterable, tokenizer, seq_len: int) -> Iterator[list[dict]]:
    """Conversations with at least one assistant token left after cutting to seq_len + 1 tokens, tokenized
    one at a time as they are asked for (a short tune renders only what it uses)."""
    return (c for c in conversations if any(render_conversation(tokenizer, c, max_tokens=seq_len + 1)[1][1:]))


def draws(conversations: list, tokenizer, seq_len: int, seed: int) -> Iterator[list[dict]]:
    """Trainable conversations in a seeded random order, every one once per pass, reshuffled each pass."""
    order = random.Random(seed)
    while True:
        yield from trainable(order.sample(conversations, len(conversations)), tokenizer, seq_len)


@torch.no_grad()
def assistant_loss(model, tokenizer, conversations, seq_len: int, batch_size: int = 8) -> float:
    """Mean cross-entropy (nats) over assistant tokens, the number chat tuning lowers."""
    device = model.cos.device
    total, count = 0.0, 0
    for i in range(0, len(conversations), batch_size):
        x, y = make_batch(conversations[i : i + batch_size], tokenizer, seq_len)
        losses = model(x.to(device), targets=y.to(device), loss_reduction="none")  # (B, T)
        keep = y.to(device) != -1
        total += losses[keep].double().sum().item()
        count += int(keep.sum())
    assert count > 0, "expected at least one assistant token to score"
    return total / count


# ------------------------------------------------------------------ the tune


def _parent_checkpoint(run_dir: Path, record: RunRecord) -> Path:
    rel = record.files.checkpoint
    ckpt = run_dir / rel if rel else latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None or not (Path(ckpt) / "model.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} has no final checkpoint to tune: run it with checkpoints kept")
    return Path(ckpt)


def chat_tune(
    run_dir: str | Path,
    *,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    runs_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    device: str = "cpu",
    config: ChatTuneConfig | None = None,
    log=print,
) -> Path:
    """Fine-tune the final checkpoint of `run_dir` on data_dir's conversations; returns the child run dir."""
    config = config or default_config(device)
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    for split in ("train", "val"):
        if not (data_dir / f"{split}.jsonl").is_file():
            raise FileNotFoundError(
                f"{data_dir}/{split}.jsonl not found: pass --data-dir, or make one with `speedrun data chat --out DIR`"
            )
    parent = read_record(run_dir)
    if parent.status != "completed":
        raise ValueError(f"run {parent.run_id} is {parent.status}: only a completed run can be chat-tuned")
    ckpt = _parent_checkpoint(run_dir, parent)
    dev = torch.device(device)
    model, tokenizer, meta = load_model(ckpt, dev, compute_dtype(dev), tokenizer_dir)
    seq_len = min(config.seq_len or model.config.sequence_len, model.config.sequence_len)  # cut to what it can see

    train = read_conversations(data_dir / "train.jsonl")
    val = list(itertools.islice(trainable(read_conversations(data_dir / "val.jsonl"), tokenizer, seq_len),
                                config.eval_conversations))  # fmt: skip
    if not val or next(trainable(train, tokenizer, seq_len), None) is None:
        raise ValueError(
            f"{data_dir} has no conversation with an assistant turn within {seq_len} tokens: pass a longer --seq-len"
        )

    child = Path(runs_dir or run_dir.parent) / f"{parent.run_id}-chat-{time.strftime('%Y%m%dT%H%M%S')}"
    child.mkdir(parents=True)
    info = ChatTune(
        **{**asdict(config), "seq_len": seq_len},
        data_sha256=file_sha256(data_dir / "train.jsonl"),
        parent_checkpoint=os.path.relpath(ckpt, run_dir),
    )
    record = parent.model_copy(
        update={
            "run_id": child.name,
            "parent_run_id": parent.run_id,
            "status": "running",
            "official": False,
            "unofficial_reasons": [f"chat tuning of {parent.run_id}: untimed"],
            "created": now_iso(),
            "finished": None,
            "command": ["speedrun", "chat-tune", parent.run_id],
            "seed": config.seed,
            "chat_tune": info,
            "timing": None,
            "result": None,
            "throughput": None,
            "telemetry": None,
            "files": Files(telemetry=None, log=None),
            "error": None,
        },
        deep=True,
    )
    write_record(child, record)
    t0 = time.time()
    try:
        info.val_loss_before = assistant_loss(model, tokenizer, val, seq_len)
        log(
            f"chat-tune {parent.run_id}: val assistant loss {info.val_loss_before:.4f} before; "
            f"{config.steps} steps of {config.batch_size} conversations (≤ {seq_len} tokens) from {len(train)}"
        )
        with open(child / record.files.events, "w") as events:
            _train(model, tokenizer, train, seq_len, config, events, log)
        info.val_loss_after = assistant_loss(model, tokenizer, val, seq_len)
        log(f"chat-tune {parent.run_id}: val assistant loss {info.val_loss_after:.4f} after {config.steps} steps")
        model.eval()
        out = save_checkpoint(
            child / "checkpoints",
            config.steps,
            model,
            None,
            {"chat_tuned": True, "parent_run_id": parent.run_id, "tokenizer_hash": meta.get("tokenizer_hash")},
        )
        info.wall_time_s = time.time() - t0
        record.status, record.finished = "completed", now_iso()
        record.files.checkpoint = str(out.relative_to(child))
        write_record(child, record)
    except BaseException as e:
        record.status, record.finished, record.error = "failed", now_iso(), f"{type(e).__name__}: {e}"
        write_record(child, record)
        raise
    return child


def _train(model, tokenizer, train, seq_len: int, config: ChatTuneConfig, events, log, every_s: float = 10.0) -> None:
    """The tune itself; a progress line every `every_s` seconds (and at the first and last step)."""
    base = TrainConfig()
    groups = build_param_groups(
        model,
        unembedding_lr=base.unembedding_lr * config.lr_frac,
        embedding_lr=base.embedding_lr * config.lr_frac,
        matrix_lr=base.matrix_lr * config.lr_frac,
        weight_decay=0.0,
        scalar_lr=base.scalar_lr * config.lr_frac,
    )
    optimizer = MuonAdamW(groups, compute_dtype=model.compute_dtype)
    stream = draws(train, tokenizer, seq_len, config.seed)
    device = model.cos.device
    model.train()
    t0 = last_line = time.monotonic()
    for step in range(config.steps):
        batch = list(itertools.islice(stream, config.batch_size))
        x, y = make_batch(batch, tokenizer, seq_len)
        loss = model(x.to(device), targets=y.to(device))
        loss.backward()
        lrm = 1.0 - step / config.steps  # linear decay to 0
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"chat-tune loss is {loss.item()} at step {step}: lower --lr-frac")
        events.write(json.dumps({"event": "step", "step": step, "loss": loss.item(), "lr_multiplier": lrm}) + "\n")
        now = time.monotonic()
        if step == 0 or step == config.steps - 1 or now - last_line >= every_s:
            last_line = now
            eta_s = (now - t0) / (step + 1) * (config.steps - step - 1)
            log(f"chat-tune step {step + 1}/{config.steps} | loss {loss.item():.4f} | ETA {eta_s:.0f}s")


# ------------------------------------------------------------------ fetching a public conversation set


def download(url: str, dest: str | Path, *, sha256: str | None = None, timeout_s: float = 60.0) -> Path:
    """Download url to dest, resuming a `.part` file with an HTTP Range request; checked against sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and (sha256 is None or file_sha256(dest) == sha256):
        return dest
    part = dest.with_name(dest.name + ".part")
    transfer(url, part, timeout_s)
    if sha256 is not None and (got := file_sha256(part)) != sha256:
        part.unlink()
        raise ValueError(f"{url} has sha256 {got}, expected {sha256}: the download was deleted, try again")
    part.replace(dest)
    return dest


def to_messages(record: dict) -> dict | None:
    """A dolly record (instruction, context, response) or an already-converted {"messages": ...} line.

    The rules of shared/data/chat/README.md: user = instruction, + blank line + context when there is
    one; assistant = response; stripped; None when either side is empty.
    """
    if "messages" in record:
        return {"messages": record["messages"]}
    user, context = record.get("instruction", "").strip(), record.get("context", "").strip()
    answer = record.get("response", "").strip()
    if not user or not answer:
        return None
    user = f"{user}\n\n{context}" if context else user
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def fetch_chat_data(
    out_dir: str | Path,
    *,
    url: str = DOLLY_URL,
    sha256: str | None = None,
    local_path: str | Path | None = None,
    val_fraction: float = 0.05,
    seed: int = 1337,
) -> dict:
    """Download (or copy from local_path) a conversation JSONL, convert it, write out_dir/{train,val}.jsonl.

    Duplicates (same user and assistant text) are dropped; the shuffle is random.Random(seed); the
    first val_fraction goes to val. Returns counts and the raw file's sha256.
    """
    out_dir = Path(out_dir)
    raw = out_dir / "raw" / (Path(local_path).name if local_path else url.rsplit("/", 1)[-1] or "data.jsonl")
    if local_path is not None:
        raw.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, raw)
        if sha256 is not None and file_sha256(raw) != sha256:
            raise ValueError(f"{local_path} does not have sha256 {sha256}")
    else:
        download(url, raw, sha256=sha256)
    seen, rows = set(), []
    for line in raw.read_text().splitlines():
        if line.strip() and (row := to_messages(json.loads(line))) is not None:
            key = json.dumps(row, sort_keys=True)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    random.Random(seed).shuffle(rows)
    n_val = max(1, round(len(rows) * val_fraction))
    for name, part in (("val", rows[:n_val]), ("train", rows[n_val:])):
        (out_dir / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    return {"train": len(rows) - n_val, "val": n_val, "raw": str(raw), "raw_sha256": file_sha256(raw)}
