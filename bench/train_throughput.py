"""Training throughput of the frozen baseline on real data: steady-state tokens/s, MFU, peak RSS, first step.

    python -m bench.train_throughput [--depth 4] [--steps 25] [--no-compile] [--json OUT]

Runs `baseline.train.train` on the shared shards with the issue-2 reference config by default (depth 4,
head dim 64, vocab 8192, seq 512, device batch 32, total batch 16,384 tokens, window pattern L,
torch.compile on, fp32 on CPU). The vocab-8192 tokenizer is trained once, in a child process so it
does not count in this process's peak RSS, into --cache-dir; nanochat_reference.py converts the same
one for nanochat. Steady state = the median over steps 11..N-1, the steps the speedrun's timer counts;
tokens/s is computed from each step's dt exactly as for the reference. Peak RSS is this process's
(getrusage maxrss); torch.compile's worker processes are not counted, for ours or for nanochat.
MFU is 0 on CPU (no peak FLOP/s is known), so the achieved GFLOP/s is printed as well.

Side by side with the real nanochat: `python -m bench.nanochat_reference --side-by-side`.
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.lockstep import Turns, take_turns_around
from protocol.paths import cache_root
from protocol.timing import NANOCHAT_UNTIMED_STEPS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "pretrain"
DEFAULT_CACHE_DIR = cache_root() / "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's flags, shared with nanochat_reference.py so both sides take the same config."""
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--device-batch-size", type=int, default=32)
    parser.add_argument("--total-batch-size", type=int, default=16384, help="tokens per optimizer step")
    parser.add_argument("--window-pattern", default="L")
    parser.add_argument("--steps", type=int, default=25, help="optimizer steps; the median is over 11..steps-1")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="torch.compile the model"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda (fp32 on CPU, bf16 on CUDA SM80+)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="parquet shards, last = val")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokenizer-max-chars", type=int, default=20_000_000, help="tokenizer training text")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the tokenizer is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")


def ensure_tokenizer(data_dir: Path, cache_dir: Path, vocab_size: int, max_chars: int, doc_cap: int = 10_000) -> Path:
    """A tokenizer directory trained on data_dir's train split, trained once (in a child process) and cached."""
    shards = sorted(data_dir.glob("*.parquet"))
    if len(shards) < 2:
        raise SystemExit(f"{data_dir} holds {len(shards)} parquet shards, need >= 2 (train + val): pass --data-dir")
    data_key = hashlib.sha1(repr([(p.name, p.stat().st_size) for p in shards]).encode()).hexdigest()[:10]
    tok_dir = cache_dir / f"tokenizer-v{vocab_size}-c{max_chars}-d{doc_cap}-{data_key}"
    if not (tok_dir / "tokenizer.json").is_file():
        print(f"training a vocab-{vocab_size} tokenizer on {max_chars:,} chars of {data_dir} into {tok_dir}")
        code = (
            "import sys; from baseline.tokenizer import train_from_shards as t; "
            "t(*sys.argv[1:3], *map(int, sys.argv[3:]))"
        )
        args = [str(data_dir), str(tok_dir), str(vocab_size), str(max_chars), str(doc_cap)]
        subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=REPO_ROOT)
    return tok_dir


def summarize(dts: list[float], mfus: list[float], tokens_per_step: int, flops_per_token: float) -> dict:
    """Steady-state numbers from per-step dt (s) and MFU (%), steps numbered from 0."""
    if len(dts) <= NANOCHAT_UNTIMED_STEPS:
        raise SystemExit(f"only {len(dts)} steps ran: need --steps >= {NANOCHAT_UNTIMED_STEPS + 1} for a steady state")
    steady_dt = statistics.median(dts[NANOCHAT_UNTIMED_STEPS:])
    tokens_per_s = statistics.median(tokens_per_step / dt for dt in dts[NANOCHAT_UNTIMED_STEPS:])
    return dict(
        steps=len(dts),
        steady_steps=len(dts) - NANOCHAT_UNTIMED_STEPS,
        tokens_per_s=tokens_per_s,
        tokens_per_s_min=tokens_per_step / max(dts[NANOCHAT_UNTIMED_STEPS:]),
        tokens_per_s_max=tokens_per_step / min(dts[NANOCHAT_UNTIMED_STEPS:]),
        step_s=steady_dt,
        gflop_per_s=tokens_per_s * flops_per_token / 1e9,
        mfu=statistics.median(mfus[NANOCHAT_UNTIMED_STEPS:]),
        first_step_s=dts[0],
        warmup_s=sum(dts[:NANOCHAT_UNTIMED_STEPS]),
        timed_s=sum(dts[NANOCHAT_UNTIMED_STEPS:]),
        step_dts=dts,
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def provenance(device: str) -> dict:
    import torch

    def git(*cmd):
        out = subprocess.run(["git", *cmd], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else None

    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo") if ln.startswith("model name")), None)
    return dict(
        code_commit=git("rev-parse", "HEAD"),
        code_dirty=bool(git("status", "--porcelain", "--untracked-files=no")),
        torch=torch.__version__,
        python=platform.python_version(),
        device=device,
        cpu=cpu or platform.processor(),
        torch_threads=torch.get_num_threads(),
        load_avg=os.getloadavg(),
    )


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def measure_ours(args: argparse.Namespace) -> dict:
    """Train with the frozen trainer in this process; the numbers come from its events.jsonl."""
    from baseline.config import TrainConfig, plan_training
    from baseline.device import init_runtime
    from baseline.train import train

    tok_dir = ensure_tokenizer(args.data_dir, args.cache_dir, args.vocab_size, args.tokenizer_max_chars)
    config = TrainConfig(
        depth=args.depth,
        head_dim=args.head_dim,
        max_seq_len=args.max_seq_len,
        window_pattern=args.window_pattern,
        vocab_size=args.vocab_size,
        num_iterations=args.steps,
        device_batch_size=args.device_batch_size,
        total_batch_size=args.total_batch_size,
        eval_every=-1,
        compile=args.compile,
    )
    runtime = init_runtime(args.device)
    if (turns := Turns.from_env()) is not None:  # --lockstep: one timed step at a time with the other side
        import baseline.train

        take_turns_around(baseline.train, "synchronize", turns)  # it brackets every timed step, nothing else
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as out:
        result = train(config, runtime, data_dir=args.data_dir, tokenizer_dir=tok_dir, out_dir=out)
        events = [json.loads(line) for line in (Path(out) / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("event") == "step"]
    plan = plan_training(config, runtime.world_size)
    return dict(
        impl="speedrun baseline",
        config=vars(args),
        dtype=str(runtime.compute_dtype).removeprefix("torch."),
        status=result.status,
        final_loss=result.final_loss,
        flops_per_token=plan.flops_per_token,
        smooth_losses=[e["smooth_loss"] for e in steps],  # debiased EMA, as nanochat logs it
        **summarize([e["dt_s"] for e in steps], [e["mfu"] for e in steps], plan.total_batch_size, plan.flops_per_token),
        trainer_tokens_per_s=result.tokens_per_s,  # the trainer's own median (upper median when even)
        peak_rss_gib=peak_rss_gib(),
        wall_s=time.perf_counter() - start,
        tokenizer_dir=str(tok_dir),
        provenance=provenance(args.device),
    )


def format_report(r: dict) -> str:
    lines = [
        f"{r['impl']}: depth {r['config']['depth']}, {r['dtype']}, compile={r['config']['compile']}, "
        f"{r['steps']} steps ({r['steady_steps']} steady)",
        f"  tokens/s (median steps {NANOCHAT_UNTIMED_STEPS}..{r['steps'] - 1}): {r['tokens_per_s']:,.0f} "
        f"(range {r['tokens_per_s_min']:,.0f}..{r['tokens_per_s_max']:,.0f}), step {r['step_s'] * 1000:,.0f} ms",
        f"  achieved: {r['gflop_per_s']:,.1f} GFLOP/s ({r['flops_per_token']:.3e} FLOPs/token), "
        f"MFU {r['mfu']:.2f}%" + (" (no peak FLOP/s known for this device)" if r["mfu"] == 0 else ""),
        f"  first step {r['first_step_s']:,.1f} s, warm-up (steps 0..10) {r['warmup_s']:,.1f} s",
        f"  peak RSS {r['peak_rss_gib']:.2f} GiB, last smoothed loss {r['smooth_losses'][-1]:.6f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = measure_ours(args)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
