"""An open-division model in the chat: its code unpacked from the bundle, its model run only in the sandbox.

    why = open_chat.unavailable()       # None, or one line naming the fix (no bubblewrap)
    engine = open_chat.load_engine(run, bundle_dir, tokenizer, work_dir=..., threads=2, limits=..., start_timeout_s=...)

The server never imports an open run's code. As for its metric (leaderboard/open_metric.py), the bundle's
source.tar is unpacked with protocol.source.check_source (every member safe, the files' hash the record's)
into work_dir/source, and eval.open_generation starts the model's process in the bubblewrap sandbox, once
per served model, kept warm (restarted by the next request if it dies). The process gets token ids and
returns next-token logits; the chat's tokenizer, chat template, sampler, seed and limits stay this side's,
so the open model streams through the same OpenAI-compatible API as a closed one. No KV cache: a token
costs a forward over the whole context (eval/open_generation.py).

work_dir (storage_dir/chat-open/<bundle sha256>.<pid>/) holds the unpacked source, the model's own work dir
(sandbox/, its cwd) and each start's log (log-N.txt, out of the model's reach), kept for an admin to read;
the next load of the same run by the same process replaces it, and a load sweeps the work dirs of server
processes that have ended (a restart would otherwise leave one per run and process behind).
"""

import os
import shutil
from pathlib import Path

import psutil

import sandbox
from baseline.checkpoint import read_meta
from eval.open_generation import ModelProcess, SandboxedEngine
from leaderboard.models import Run
from protocol.record import parse_record
from protocol.source import SOURCE_FILE, check_source

WORK_DIR = "chat-open"  # under Settings.storage_dir


def unavailable() -> str | None:
    """None when open models can be served here; else one line saying why, with the fix."""
    why = sandbox.available()
    return f"an open model runs only in the sandbox, which cannot start here: {why}" if why else None


def work_dir_for(storage_dir: Path, run: Run) -> Path:
    """This server process's own: two processes (uvicorn workers) serving the same run do not share one."""
    return Path(storage_dir) / WORK_DIR / f"{run.bundle_sha256}.{os.getpid()}"


def sweep_ended(storage_dir: Path) -> list[Path]:
    """Remove the work dirs of server processes that are gone (work_dir_for's <sha256>.<pid>); return them."""
    swept = []
    for d in (Path(storage_dir) / WORK_DIR).glob("*.*"):
        pid = d.name.rpartition(".")[2]
        if d.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            swept.append(d)
    return swept


def load_engine(
    run: Run,
    bundle_dir: Path,
    tokenizer,
    *,
    work_dir: Path,
    threads: int,
    limits: sandbox.Limits,
    start_timeout_s: float,
) -> SandboxedEngine:
    """The run's model process, started and loaded (warm), behind Engine's generate(); see the docstring."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    shutil.rmtree(work_dir, ignore_errors=True)  # an earlier load's
    sweep_ended(work_dir.parent.parent)
    work_dir.mkdir(parents=True)
    ref = parse_record(run.record, where="the run's record").submission
    source = check_source(
        (bundle_dir / SOURCE_FILE).read_bytes(), work_dir / "source", name=ref.name, expected=ref.hash
    )
    config = read_meta(bundle_dir)["model_config"]  # JSON only; held to the track at upload
    process = ModelProcess(
        source=source, checkpoint=bundle_dir, vocab_size=config["vocab_size"], work_dir=work_dir / "model",
        threads=threads, limits=limits, start_timeout_s=start_timeout_s,
    )  # fmt: skip
    try:
        process.start()
    except Exception:
        process.close()
        raise
    return SandboxedEngine(process, tokenizer, config["sequence_len"])
