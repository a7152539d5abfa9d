"""Training throughput of the frozen baseline on one GPU: tokens/s, MFU and peak memory per depth.

    python bench/gpu_throughput.py --depths 12 20 --steps 30 [--json OUT]

Runs the real trainer (bf16, torch.compile, the recipe's SSSL windows) on random tokens, so it
needs no data or tokenizer on the machine: throughput does not depend on the token values.
Steady state = the median over steps > 10, the steps the speedrun's timer counts; mean power and
energy over those steps come from the NVML telemetry sampler (CPU backend without a GPU).
"""

import argparse
import json
import tempfile
import time

import torch

from baseline.attention import backend
from baseline.config import TrainConfig
from baseline.device import device_name, init_runtime
from baseline.train import train
from harness.telemetry import TelemetrySampler, read_samples, summarize


def random_batches(batch: int, seq_len: int, vocab: int, device: torch.device):
    def batches(_resume_state):
        g = torch.Generator(device="cpu").manual_seed(0)
        while True:
            rows = torch.randint(0, vocab, (batch, seq_len + 1), generator=g)
            yield rows[:, :-1].to(device), rows[:, 1:].to(device), {}

    return batches


def measure(depth: int, steps: int, device_batch: int, window_pattern: str) -> dict:
    runtime = init_runtime()
    config = TrainConfig(
        depth=depth,
        device_batch_size=device_batch,
        total_batch_size=device_batch * 2048,
        num_iterations=steps,
        eval_every=-1,
        window_pattern=window_pattern,
    )
    torch.cuda.reset_peak_memory_stats() if runtime.device.type == "cuda" else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out, TelemetrySampler(f"{out}/telemetry.jsonl") as sampler:
        result = train(
            config,
            runtime,
            data_dir=None,
            tokenizer_dir=None,
            out_dir=out,
            batches=random_batches(device_batch, config.max_seq_len, config.vocab_size, runtime.device),
            log=lambda _msg: None,
        )
        sampler.stop()
        steps = [json.loads(line) for line in open(f"{out}/events.jsonl")]
        timed = [e for e in steps if e.get("event") == "step" and e["step"] > 10]
        power = summarize(
            read_samples(f"{out}/telemetry.jsonl"),
            wall_start=timed[0]["wall"] - timed[0]["dt_s"] if timed else None,
            wall_end=timed[-1]["wall"] if timed else None,
        )
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if runtime.device.type == "cuda" else float("nan")
    return dict(
        device=device_name(runtime.device),
        depth=depth,
        window_pattern=window_pattern,
        attention=backend(runtime.compute_dtype, runtime.device),
        dtype=str(runtime.compute_dtype).removeprefix("torch."),
        tokens_per_step=config.total_batch_size,
        tokens_per_s=result.tokens_per_s,
        mfu=result.mfu,
        warmup_s=result.warmup_time_s,
        peak_mem_gib=peak_gib,
        telemetry_backend=power["backend"],
        mean_power_w=power["mean_power_w"],
        energy_j=power["energy_j"],
        wall_s=time.perf_counter() - start,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[12, 20])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device-batch-size", type=int, default=16)
    parser.add_argument("--window-pattern", default="SSSL")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = [measure(d, args.steps, args.device_batch_size, args.window_pattern) for d in args.depths]
    header = f"{'depth':>5} {'attn':>5} {'tok/s':>10} {'MFU %':>6} {'warm-up s':>9} {'peak GiB':>8} {'W':>6}  device"
    print(header)
    for r in rows:
        print(
            f"{r['depth']:>5} {r['attention']:>5} {r['tokens_per_s']:>10,.0f} {r['mfu']:>6.1f} "
            f"{r['warmup_s']:>9.1f} {r['peak_mem_gib']:>8.1f} {r['mean_power_w'] or float('nan'):>6.0f}  {r['device']}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
