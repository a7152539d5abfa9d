"""What the harness costs: the same training bare (`speedrun train`) and inside `speedrun run`.

    python -m bench.harness_overhead [--pairs 2] [--steps 24] [--depth 2]

Both sides train the same config on the same data and tokenizer in a child process; the harness
side adds the parent's telemetry sampler, progress tailing and record keeping. The two alternate
(bare, harness, bare, harness, ...) so drift on a shared machine hits both alike. Printed: each
side's median step time over steps > 10 and the overhead ratio harness/bare (goal ≤ 1.01).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from protocol.tracks import load_track

REPO = Path(__file__).resolve().parents[1]


def median_dt(events_path: Path) -> float:
    events = [json.loads(line) for line in events_path.read_text().splitlines()]
    return statistics.median(e["dt_s"] for e in events if e["event"] == "step" and e["step"] > 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()

    books = load_track("cpu-books")
    config = {**books.recipe, "depth": args.depth, "num_iterations": args.steps, "eval_every": -1}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        tmp = Path(tmp)
        track_text = books.path.read_text()
        for key in ("depth", "num_iterations"):
            track_text = track_text.replace(f"\n{key} = {books.recipe[key]}\n", f"\n{key} = {config[key]}\n")
        track_text = track_text.replace(f"eval_tokens = {books.target.eval_tokens}", "eval_tokens = 16384")
        track_path = tmp / "overhead.toml"
        track_path.write_text(track_text)
        env = {**os.environ, "SPEEDRUN_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "2"}

        def speedrun(*argv):
            cmd = [sys.executable, "-m", "speedrun", *map(str, argv)]
            subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True)

        # One harness run first: it trains the tokenizer that the bare runs then reuse.
        speedrun("run", "baseline", "--track", track_path, "--runs-dir", tmp / "warm", "--max-steps", 1)
        tokenizer = next((tmp / "cache" / "tokenizers").iterdir())
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
        data_dir = (REPO / books.dataset.default_dir).resolve()
        bare, harness = [], []
        for i in range(args.pairs):
            out, runs = tmp / f"bare{i}", tmp / f"runs{i}"
            speedrun("train", *flags, "--data-dir", data_dir, "--tokenizer", tokenizer, "--out", out,
                     "--eval-tokens", 16384)  # fmt: skip
            bare.append(median_dt(out / "events.jsonl"))
            speedrun("run", "baseline", "--track", track_path, "--runs-dir", runs)
            harness.append(median_dt(next(runs.iterdir()) / "events.jsonl"))
            print(f"pair {i}: bare {bare[-1] * 1000:.1f} ms/step, harness {harness[-1] * 1000:.1f} ms/step")
    b, h = statistics.median(bare), statistics.median(harness)
    print(f"median step time: bare {b * 1000:.1f} ms, harness {h * 1000:.1f} ms, overhead ratio {h / b:.4f}")


if __name__ == "__main__":
    main()
