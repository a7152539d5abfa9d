"""What reproducing a cpu-books run costs: a real run, uploaded, verified and re-run in the sandbox by the worker.

    python -m bench.reproduce_cpu_books [--steps N] [--seed 42]

cpu-books as it is (d4, its data, tokenizer, 2 threads, its [reproduce] table), the whole run unless
--steps cuts it. The run is made with `speedrun run`'s own code, uploaded to a throwaway SQLite
leaderboard, verified, and re-run by the verify worker inside the sandbox. Printed: the original run's
timed and wall seconds, the re-run's sandbox wall seconds (warm-up, training and eval, as the server
pays them), its timed seconds and ratio, and the verdict. Needs bubblewrap and the track's shards.
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from harness import runner
from harness.submit import pack
from leaderboard.app import create_app
from leaderboard.settings import Settings, TrackResources
from leaderboard.tokens import create_token
from leaderboard.verifier import verify_worker
from protocol.paths import track_data_dir, track_tokenizer_dir
from protocol.record import read_record
from protocol.tracks import load_track


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="cut the run (default: the track's num_iterations)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    books = load_track("cpu-books")
    with tempfile.TemporaryDirectory(prefix="bench-reproduce-") as tmp:
        tmp = Path(tmp)
        track_file = tmp / "cpu-books.toml"
        steps = args.steps or books.recipe["num_iterations"]
        text = re.sub(r"(?m)^num_iterations = \d+$", f"num_iterations = {steps}", books.path.read_text())
        track_file.write_text(
            text.replace('default_dir = "../shared/data/pretrain"', f'default_dir = "{track_data_dir(books)}"')
        )
        track = load_track(track_file)
        t0 = time.monotonic()
        [run_dir] = runner.run(track, "baseline", seeds=[args.seed], runs_dir=tmp / "runs")
        run_wall_s, record = time.monotonic() - t0, read_record(run_dir)
        settings = Settings(
            database_url=f"sqlite:///{tmp / 'lb.db'}",
            storage_dir=tmp / "storage",
            track_files=[track_file],
            track_resources={
                track.name: TrackResources(
                    data_dir=track_data_dir(track), tokenizer_dir=track_tokenizer_dir(track, track.dataset.content_hash)
                )
            },
        )
        client = TestClient(create_app(settings))
        token = create_token("bench", settings=settings)
        response = client.post(
            "/api/runs",
            headers={"Authorization": f"Bearer {token}"},
            files={"bundle": ("bundle.tar.gz", pack(run_dir), "application/gzip")},
        )
        response.raise_for_status()
        t0 = time.monotonic()
        verify_worker(once=True, settings=settings)
        worker_s = time.monotonic() - t0
        run = client.get(f"/api/runs/{record.run_id}").json()
        r = run["reproduction_detail"] or {}
        time_evidence = (r.get("evidence") or {}).get("time", {})
        print(f"cpu-books, {steps} steps, seed {args.seed}")
        print(f"  original run:  timed {record.timing.train_time_s:.1f} s, wall {run_wall_s:.1f} s")
        print(f"  worker:        verify + re-run {worker_s:.1f} s; verification {run['verification']}")
        print(
            f"  re-run:        {r.get('status')}, sandbox wall {r.get('duration_s') or 0:.1f} s, timed "
            f"{time_evidence.get('reproduced_s') or 0:.1f} s, ratio {r.get('time_ratio') or 0:.2f}"
        )
        for why in r.get("reasons") or [r.get("error")] if r.get("status") != "reproduced" else []:
            print(f"  why: {why}")


if __name__ == "__main__":
    main()
