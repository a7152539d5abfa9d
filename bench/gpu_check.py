"""The GPU check: ours beside nanochat on one card, CORE eval throughput, and a real `speedrun run`; one table.

    python -m bench.gpu_check [--nanochat-git DIR] [--out DIR]        # scripts/gpu_check.sh runs this

Rows (each under its own time limit, the whole under 8 minutes on an H100/H200):
- training tokens/s and MFU at d12 and d20 (bf16, torch.compile, SSSL, 32,768 tokens per step), ours and
  nanochat's base_train on the same card (bench/nanochat_reference.py --side-by-side);
- CORE examples/s of the batched scorer and of the one-example-per-forward reference (nanochat's
  scoring, re-implemented and tested equal) on a d12-shaped model, with the answers compared;
- a short `speedrun run` of the baseline on one GPU (unofficial: the CPU track's data), with its NVML
  telemetry summary (mean power, energy) and the attention backend it ran.
Without CUDA every row says "skipped (no CUDA)": the script still runs end to end and prints the table.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from baseline.attention import backend
from protocol.paths import REPO
from protocol.record import read_record

LIMIT_S = {"side_by_side": 150, "core": 60, "run": 120}


def _stage(name: str, cmd: list[str], out: Path, timeout_s: float) -> tuple[dict | None, str]:
    """Run one stage writing JSON to `out`; (its JSON, a one-line status)."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"failed ({proc.returncode}): {tail[0][:100]}"
    return json.loads(out.read_text()), f"ok in {time.monotonic() - t0:.0f} s"


def main(argv=None) -> list[tuple]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nanochat-git", type=Path, default=os.environ.get("NANOCHAT_GIT"))
    p.add_argument("--out", type=Path, default=REPO / "out" / "gpu_check")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    rows: list[tuple] = []
    py = sys.executable
    for depth in (12, 20):
        if not cuda:
            rows.append((f"train d{depth}", "skipped (no CUDA)", "", "", ""))
            continue
        out = args.out / f"side_by_side_d{depth}.json"
        cmd = [py, "-m", "bench.nanochat_reference", "--device", "cuda", "--depth", str(depth), "--head-dim", "128",
               "--max-seq-len", "2048", "--device-batch-size", "16", "--total-batch-size", "32768",
               "--window-pattern", "SSSL", "--steps", "20", "--json", str(out)]  # fmt: skip
        if args.nanochat_git:
            cmd += ["--side-by-side", "--nanochat-git", str(args.nanochat_git)]
            result, status = _stage(f"d{depth}", cmd, out, LIMIT_S["side_by_side"])
            if result:
                ours, ref = result["pairs"][0]["ours"], result["pairs"][0]["reference"]
                rows.append((f"train d{depth} tok/s", f"{ours['tokens_per_s']:,.0f}", f"{ref['tokens_per_s']:,.0f}",
                             f"{ours['tokens_per_s'] / ref['tokens_per_s']:.3f}", status))  # fmt: skip
                rows.append((f"train d{depth} MFU %", f"{ours['mfu']:.1f}", f"{ref['mfu']:.1f}", "", ""))
                continue
        else:
            cmd = [py, "bench/gpu_throughput.py", "--depths", str(depth), "--steps", "20", "--json", str(out)]
            result, status = _stage(f"d{depth}", cmd, out, LIMIT_S["side_by_side"])
            if result:
                r = result[0]
                rows.append((f"train d{depth} tok/s", f"{r['tokens_per_s']:,.0f}", "no NANOCHAT_GIT", "", status))
                rows.append((f"train d{depth} MFU %", f"{r['mfu']:.1f}", "", "", ""))
                continue
        rows.append((f"train d{depth}", status, "", "", ""))
    if cuda:
        out = args.out / "core.json"
        cmd = [py, "-m", "bench.core_throughput", "--model", "d12", "--device", "cuda", "--tasks", "arc_easy",
               "winograd", "lambada_openai", "--max-per-task", "64", "--json", str(out)]  # fmt: skip
        result, status = _stage("core", cmd, out, LIMIT_S["core"])
        if result:
            for kind, t in result["types"].items():
                same = all(r["same_answers"] for r in result["tasks"] if r["type"] == kind)
                rows.append((f"CORE {kind} ex/s", f"{t['batched_ex_per_s']:.1f}", f"{t['reference_ex_per_s']:.1f}",
                             f"{t['ratio']:.2f}", f"answers {'equal' if same else 'DIFFER'}"))  # fmt: skip
        else:
            rows.append(("CORE d12", status, "", "", ""))
        runs = args.out / "runs"
        cmd = [py, "-m", "speedrun", "run", "baseline", "--track", "cpu-books", "--unofficial", "--max-steps", "30",
               "--runs-dir", str(runs), "--json"]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S["run"])
        if proc.returncode == 0 and proc.stdout.strip():
            run_id = json.loads(proc.stdout.strip().splitlines()[-1])["runs"][0]["run_id"]
            record = read_record(runs / run_id)
            tel, took = record.telemetry, f"ok in {time.monotonic() - t0:.0f} s"
            power = f"{tel.mean_power_w or 0:.0f} W, {tel.energy_j or 0:.0f} J" if tel else "no telemetry"
            timed = f"{record.timing.train_time_s:.1f} s timed"
            rows.append(("speedrun run (30 steps)", timed, power, record.provenance.environment.attention, took))
        else:
            rows.append(("speedrun run", f"failed ({proc.returncode})", proc.stderr.strip()[-100:], "", ""))
    else:
        rows += [("CORE d12", "skipped (no CUDA)", "", "", ""), ("speedrun run", "skipped (no CUDA)", "", "", "")]
    device = torch.cuda.get_device_name() if cuda else "no CUDA device"
    attn = backend(torch.bfloat16, torch.device("cuda")) if cuda else "sdpa"
    print(f"GPU check: {device}, torch {torch.__version__}, attention {attn}")
    header = ("what", "ours", "nanochat / reference", "ratio", "status")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    (args.out / "table.json").write_text(json.dumps([dict(zip(header, r, strict=True)) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()
