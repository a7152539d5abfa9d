"""The reference side of the throughput benchmark: the real nanochat's base_train on the same config and data.

    python -m bench.nanochat_reference [--steps 25] [--no-compile] [--json OUT]
    python -m bench.nanochat_reference --side-by-side [--json OUT]    # ours, then nanochat, then a table
    python -m bench.nanochat_reference --side-by-side --pairs 3 --cache cold   # the parity measurement

nanochat is never copied into this repo: it runs from a work tree outside it (--nanochat, default
$SPEEDRUN_CACHE/nanochat-<commit>), which this script extracts with `git archive` from a nanochat git
directory (--nanochat-git or $NANOCHAT_GIT: a clone or mirror of github.com/karpathy/nanochat) at
--nanochat-commit when missing.
Each run gets a fresh NANOCHAT_BASE_DIR holding
  base_data_climbmix -> --data-dir           (nanochat takes the last shard as val, as we do)
  tokenizer/tokenizer.pkl, token_bytes.pt    (OUR cached tokenizer, pickled as RustBPETokenizer.save does)
and runs `python -m scripts.base_train --depth=... --eval-every=-1 ...` in a child process with the
same torch as ours. Two shims, both in the child only: `wandb` (imported unconditionally, unused with
--run=dummy) is stubbed so it need not be installed, and --no-compile replaces torch.compile with the
identity (nanochat always compiles, model and optimizer kernels). The per-step log lines
(`step ... | dt: ...ms | ... | bf16_mfu: ...`) give the same numbers as bench/train_throughput.py.

Compile caches: each side gets its own TorchInductor/Triton cache directory. Sharing one would let the
second side reuse the first side's compiled graphs (the two models trace to near-identical graphs), so a
"cold" second side would really be warm: that order effect, not the trainer, made an earlier cold
comparison show our first step 1.8x nanochat's. `--cache cold` gives each side a fresh empty directory
per run; `--cache warm` primes each side's own directory with one unmeasured run first. `--pairs N`
repeats the pair N times, alternating which side goes first (so drift in the machine's load does not
favour one side), and prints each pair's ratios and their medians.

`--lockstep` runs a pair's two sides at once, taking turns one timed step each (bench/lockstep.py): the
VM's speed drifts by several percent over minutes, more than the two trainers differ, and in lock step
step k of both sides meets the same machine. The per-step numbers come from the same log lines.
"""

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import lockstep
from bench.lockstep import Side
from bench.train_throughput import REPO_ROOT, add_arguments, ensure_tokenizer, format_report, provenance, summarize
from protocol.paths import cache_root

DEFAULT_COMMIT = "92d63d4"
COMMIT_FILE = ".bench_commit"  # written next to the extracted tree: which commit it is
SHARED_VALUE_FLAGS = (  # add_arguments' flags that take a value, passed on to ours in --side-by-side
    "depth", "head_dim", "max_seq_len", "device_batch_size", "total_batch_size", "window_pattern",
    "steps", "device", "data_dir", "vocab_size", "tokenizer_max_chars", "cache_dir",
)  # fmt: skip

# Runs in the child, with cwd = the nanochat tree; argv: compile flag (0/1), then base_train's flags.
RUNNER = r"""
import os, resource, runpy, sys, types
compile_model = sys.argv[1] == "1"
sys.argv = ["scripts/base_train.py", *sys.argv[2:]]
sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # only wandb.init with --run != dummy uses it
if not compile_model:
    import torch
    torch.compile = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
if os.environ.get("BENCH_LOCKSTEP"):  # --lockstep: base_train's only time.time calls are each step's t0 and t1
    import importlib.util, time
    spec = importlib.util.spec_from_file_location("bench_lockstep", os.environ["BENCH_LOCKSTEP_MODULE"])
    lockstep = sys.modules["bench_lockstep"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lockstep)
    lockstep.take_turns_around(time, "time", lockstep.Turns.from_env(), caller_file="scripts/base_train.py")
runpy.run_module("scripts.base_train", run_name="__main__", alter_sys=True)
print("BENCH_PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""
STEP_LINE = re.compile(r"^step (\d+)/\d+ .*\| loss: ([\d.naif]+) \|.*\| dt: ([\d.]+)ms \| .*\| bf16_mfu: ([\d.]+)")
FLOPS_LINE = re.compile(r"Estimated FLOPs per token: ([\d.e+-]+)")
VOCAB_LINE = re.compile(r"Vocab size: ([\d,]+)")


def ensure_nanochat(tree: Path, git_dir: Path, commit: str) -> str:
    """The nanochat work tree at `tree` (extracted from git_dir at commit if missing); returns its commit."""
    if (tree / COMMIT_FILE).is_file():
        return (tree / COMMIT_FILE).read_text().strip()
    if tree.exists() and any(tree.iterdir()):
        if not (tree / "scripts" / "base_train.py").is_file():
            raise SystemExit(f"{tree} is not a nanochat tree (no scripts/base_train.py): pass --nanochat")
        return "unknown (tree not extracted by this script)"
    if not git_dir.is_dir():
        raise SystemExit(f"no nanochat at {tree} nor git dir {git_dir}: clone karpathy/nanochat, pass --nanochat-git")

    def git(*cmd, check=True, **kw):
        return subprocess.run(["git", f"--git-dir={git_dir}", *cmd], check=check, **kw)

    if git("cat-file", "-e", f"{commit}^{{commit}}", capture_output=True, check=False).returncode != 0:
        raise SystemExit(f"commit {commit} is not in {git_dir}: fetch it, or pass --nanochat-commit")
    full = git("rev-parse", commit, capture_output=True, text=True).stdout.strip()
    tree.mkdir(parents=True, exist_ok=True)
    archive = git("archive", "--format=tar", full, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / COMMIT_FILE).write_text(full + "\n")
    print(f"extracted nanochat {full[:12]} into {tree}")
    return full


def write_nanochat_tokenizer(tok_dir: Path, out_dir: Path) -> int:
    """Our tokenizer dir -> nanochat's tokenizer.pkl (a pickled tiktoken.Encoding) + token_bytes.pt."""
    import base64

    import tiktoken
    import torch
    from safetensors.torch import load_file

    config = json.loads((tok_dir / "tokenizer.json").read_text())
    ranks = {}
    for line in (tok_dir / "tokenizer.tiktoken").read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    # The same constructor arguments as nanochat's RustBPETokenizer.train_from_iterator.
    enc = tiktoken.Encoding(
        name="rustbpe", pat_str=config["pattern"], mergeable_ranks=ranks, special_tokens=config["special_tokens"]
    )
    assert enc.n_vocab == config["vocab_size"], f"vocab {enc.n_vocab} != {config['vocab_size']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    token_bytes = load_file(tok_dir / "token_bytes.safetensors")["token_bytes"].to(torch.int32)
    torch.save(token_bytes, out_dir / "token_bytes.pt")
    return enc.n_vocab


def base_train_flags(args: argparse.Namespace) -> list[str]:
    return [
        f"--device-type={args.device}",
        f"--depth={args.depth}",
        f"--head-dim={args.head_dim}",
        f"--max-seq-len={args.max_seq_len}",
        f"--device-batch-size={args.device_batch_size}",
        f"--total-batch-size={args.total_batch_size}",
        f"--window-pattern={args.window_pattern}",
        f"--num-iterations={args.steps}",
        "--eval-every=-1",
        "--core-metric-every=-1",
        "--sample-every=-1",
        "--save-every=-1",
    ]


def compile_cache_env(directory: Path) -> dict:
    """Environment that points torch.compile's on-disk caches (Inductor's FX graph cache, Triton) at `directory`."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(directory / "inductor"), "TRITON_CACHE_DIR": str(directory / "triton")}


def run_streaming(cmd: list[str], **kw) -> list[str]:
    """Run cmd, echo its output as it comes, return the lines; fail loudly on a non-zero exit."""
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, **kw) as p:
        for line in p.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited with {p.returncode}: see its output above")
    return lines


def reference_side(args: argparse.Namespace, extra_env: dict, workdir: Path) -> tuple[Side, Callable]:
    """nanochat's run as a child to start, and the function that reads its numbers from its output."""
    commit = ensure_nanochat(args.nanochat, args.nanochat_git, args.nanochat_commit)
    tok_dir = ensure_tokenizer(args.data_dir, args.cache_dir, args.vocab_size, args.tokenizer_max_chars)
    base = workdir / "nanochat-base-dir"
    base.mkdir(parents=True)
    (base / "base_data_climbmix").symlink_to(args.data_dir.resolve(), target_is_directory=True)
    vocab = write_nanochat_tokenizer(tok_dir, base / "tokenizer")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on its path
    env.update(NANOCHAT_BASE_DIR=str(base), PYTHONUNBUFFERED="1", BENCH_LOCKSTEP_MODULE=lockstep.__file__)
    env.update(extra_env)
    cmd = [sys.executable, "-c", RUNNER, "1" if args.compile else "0", *base_train_flags(args)]
    print(f"nanochat {commit[:12]}: python -m scripts.base_train {' '.join(cmd[4:])}", flush=True)

    def finish(lines: list[str], wall_s: float) -> dict:
        steps = {int(m[1]): m for line in lines if (m := STEP_LINE.match(line))}
        if sorted(steps) != list(range(args.steps)):
            raise SystemExit(f"parsed steps {sorted(steps)} from nanochat's log, expected 0..{args.steps - 1}")
        flops = next(float(m[1]) for line in lines if (m := FLOPS_LINE.search(line)))
        logged_vocab = next(int(m[1].replace(",", "")) for line in lines if (m := VOCAB_LINE.search(line)))
        assert logged_vocab == vocab, f"nanochat loaded vocab {logged_vocab}, wrote {vocab}"
        rss_kib = next(int(line.split()[1]) for line in lines if line.startswith("BENCH_PEAK_RSS_KIB"))
        dts = [float(steps[i][3]) / 1000 for i in range(args.steps)]
        mfus = [float(steps[i][4]) for i in range(args.steps)]
        return dict(
            impl=f"nanochat {commit[:7]}",
            config=vars(args),
            dtype="float32" if args.device == "cpu" else "bfloat16 (auto)",
            status="completed",
            flops_per_token=flops,
            smooth_losses=[float(steps[i][2]) for i in range(args.steps)],  # debiased EMA, as logged
            **summarize(dts, mfus, args.total_batch_size, flops),
            peak_rss_gib=rss_kib / 2**20,
            wall_s=wall_s,
            tokenizer_dir=str(tok_dir),
            nanochat_commit=commit,
            provenance=provenance(args.device),
        )

    return Side("nanochat", cmd, str(args.nanochat), env), finish


def ours_side(args: argparse.Namespace, extra_env: dict, workdir: Path) -> tuple[Side, Callable]:
    """bench/train_throughput.py on the same config in its own process, so each side's peak RSS is its own."""
    flags = [
        *(f"--{name.replace('_', '-')}={getattr(args, name)}" for name in SHARED_VALUE_FLAGS),
        "--compile" if args.compile else "--no-compile",
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "ours.json"
    cmd = [sys.executable, "-m", "bench.train_throughput", *flags, f"--json={out}"]

    def finish(_lines: list[str], _wall_s: float) -> dict:
        return json.loads(out.read_text())  # the child's own report (bench/train_throughput.py --json)

    return Side("ours", cmd, str(REPO_ROOT), {**os.environ, **extra_env}), finish


SIDES = {"ours": ours_side, "reference": reference_side}


def measure_alone(name: str, args: argparse.Namespace, extra_env: dict | None = None) -> dict:
    """One side's run, alone on the machine."""
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmp:
        side, finish = SIDES[name](args, extra_env or {}, Path(tmp))
        start = time.perf_counter()
        lines = run_streaming(side.cmd, cwd=side.cwd, env=side.env)
        return finish(lines, time.perf_counter() - start)


def measure_in_lockstep(order: list[str], args: argparse.Namespace, envs: dict) -> dict:
    """Both sides at once, taking turns step by step in `order` (bench/lockstep.py); wall_s is the pair's."""
    with tempfile.TemporaryDirectory(prefix="bench-lockstep-") as tmp:
        prepared = {name: SIDES[name](args, envs[name], Path(tmp) / name) for name in order}
        start = time.perf_counter()
        lockstep.run_in_lockstep([side for side, _ in prepared.values()])
        wall_s = time.perf_counter() - start
        return {name: finish(side.lines, wall_s) for name, (side, finish) in prepared.items()}


def side_by_side_table(ours: dict, ref: dict) -> str:
    rows = [
        ("tokens/s (median)", "tokens_per_s", "{:,.0f}"),
        ("tokens/s min", "tokens_per_s_min", "{:,.0f}"),
        ("tokens/s max", "tokens_per_s_max", "{:,.0f}"),
        ("GFLOP/s", "gflop_per_s", "{:,.1f}"),
        ("MFU %", "mfu", "{:.2f}"),
        ("first step s", "first_step_s", "{:,.1f}"),
        ("warm-up s (0..10)", "warmup_s", "{:,.1f}"),
        ("peak RSS GiB", "peak_rss_gib", "{:.2f}"),
    ]
    lines = [f"{'':20} {'ours':>12} {ref['impl']:>16} {'ours/ref':>9}"]
    for label, key, fmt in rows:
        a, b = ours[key], ref[key]
        ratio = f"{a / b:.3f}" if b else "-"
        lines.append(f"{label:20} {fmt.format(a):>12} {fmt.format(b):>16} {ratio:>9}")
    # Same config, data, tokenizer and seed: the logged (smoothed) losses should agree closely, which
    # shows both sides did the same work (bit-equal in eager fp32; compiled kernels may differ slightly).
    delta = max(abs(a - b) for a, b in zip(ours["smooth_losses"], ref["smooth_losses"], strict=True))
    lines.append(
        f"steady steps {ours['steady_steps']} vs {ref['steady_steps']}; max |smoothed loss ours - ref| {delta:.2e}"
    )
    return "\n".join(lines)


PAIR_RATIOS = (  # (label, key): ours / nanochat per pair, then the median over pairs
    ("tokens/s (median)", "tokens_per_s"),
    ("first step s", "first_step_s"),
    ("warm-up s (0..10)", "warmup_s"),
    ("peak RSS GiB", "peak_rss_gib"),
)


def measure_pair(args: argparse.Namespace, index: int, cache_root_dir: Path) -> dict:
    """One pair, each side with its own compile cache (fresh for cold, primed once for warm); odd pairs run
    nanochat first (with --lockstep: take the first turn)."""
    order = ["ours", "reference"] if index % 2 == 0 else ["reference", "ours"]
    out = {"order": order, "cache": args.cache, "lockstep": args.lockstep}
    envs = {}
    for side in order:
        directory = cache_root_dir / (f"{side}-{index}" if args.cache == "cold" else side)
        envs[side] = compile_cache_env(directory)
        if args.cache == "warm" and not directory.exists():
            print(f"== priming {side}'s compile cache (not measured)", flush=True)
            measure_alone(side, args, envs[side])
    if args.lockstep:
        print(f"== pair {index + 1}: both sides in lock step ({args.cache} compile caches)", flush=True)
        return out | measure_in_lockstep(order, args, envs)
    for side in order:
        print(f"== pair {index + 1}: {side} ({args.cache} compile cache)", flush=True)
        out[side] = measure_alone(side, args, envs[side])
    return out


def pairs_table(pairs: list[dict]) -> str:
    """Each pair's ours/nanochat ratios and their medians."""
    head = f"{'ours / nanochat':20}" + "".join(f" {'pair ' + str(i + 1):>9}" for i in range(len(pairs)))
    how = "in lock step (one step each in turn)" if pairs[0]["lockstep"] else "one side after the other"
    lines = [f"{pairs[0]['cache']} compile cache, {len(pairs)} pairs, {how}", head + f" {'median':>9}"]
    for label, key in PAIR_RATIOS:
        ratios = [p["ours"][key] / p["reference"][key] if p["reference"][key] else float("nan") for p in pairs]
        lines.append(f"{label:20}" + "".join(f" {r:>9.3f}" for r in ratios) + f" {statistics.median(ratios):>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--nanochat", type=Path, default=None, help="nanochat work tree (default: in the cache)")
    parser.add_argument(
        "--nanochat-git", type=Path, default=os.environ.get("NANOCHAT_GIT"), help="git dir to extract it from"
    )
    parser.add_argument("--nanochat-commit", default=DEFAULT_COMMIT)
    parser.add_argument("--side-by-side", action="store_true", help="run ours and nanochat; print both")
    parser.add_argument("--pairs", type=int, default=1, help="--side-by-side: this many pairs, alternating order")
    parser.add_argument(
        "--lockstep", action="store_true", help="--side-by-side: run both sides at once, taking turns step by step"
    )
    parser.add_argument(
        "--cache", choices=["cold", "warm"], default="cold", help="each side's compile cache: fresh, or primed once"
    )
    args = parser.parse_args(argv)
    args.nanochat = args.nanochat or cache_root() / f"nanochat-{args.nanochat_commit}"
    if args.nanochat_git is None and not (args.nanochat / COMMIT_FILE).is_file():
        raise SystemExit("no nanochat checkout: pass --nanochat-git DIR (or set NANOCHAT_GIT) to extract one")
    if args.nanochat.resolve().is_relative_to(REPO_ROOT):
        raise SystemExit(f"--nanochat {args.nanochat} is inside this repo: keep nanochat's code outside it")
    ensure_nanochat(args.nanochat, args.nanochat_git, args.nanochat_commit)  # fail before the long run
    if not args.side_by_side:
        result = measure_alone("reference", args)
        print(format_report(result))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-compile-caches-") as caches:
            pairs = [measure_pair(args, i, Path(caches)) for i in range(args.pairs)]
        for i, pair in enumerate(pairs):
            print(f"== pair {i + 1} ({' first, '.join(pair['order'])} second)")
            print(format_report(pair["ours"]))
            print(format_report(pair["reference"]))
            print(side_by_side_table(pair["ours"], pair["reference"]))
        print(pairs_table(pairs))
        result = dict(pairs=pairs, ratio_tokens_per_s=statistics.median(
            p["ours"]["tokens_per_s"] / p["reference"]["tokens_per_s"] for p in pairs))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
