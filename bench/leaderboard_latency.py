"""Leaderboard read latency under concurrent clients, and the time to verify one CPU-track bundle.

    python -m bench.leaderboard_latency                                    # 10,000 runs, 100 clients, 20 s
    python -m bench.leaderboard_latency --runs 1000 --clients 20 --seconds 5 --verify   # a short version

It fills a fresh SQLite database with `--runs` verified runs of the golden test track spread over
`--submissions` submissions (rows written directly, standings computed by the real ranking code),
starts `uvicorn leaderboard.app:create_app --factory` in its own process, and has `--clients`
concurrent asyncio clients (bare keep-alive HTTP/1.1) loop over four reads (or those named by --reads) for `--seconds`:
    board   GET /tracks/golden                       the board page (HTML, record chart)
    api     GET /api/tracks/golden/leaderboard       the board as JSON
    runs    GET /api/runs?track=golden&limit=50      a page of runs
    run     GET /api/runs/{random run id}            one run's detail (not cached)
It prints p50/p99/max latency and requests/s per read. Board and leaderboard reads are cached for
LEADERBOARD_CACHE_TTL_S (default 2 s), so "cached reads" are the board and api rows. With
`--verify` it also times the verification of one golden bundle (val bpb recomputed on CPU).
The clients share the machine with the server: on 2 cores, the latencies include that contention.
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert
from sqlmodel import Session, select


def populate(settings, n_runs: int, n_submissions: int) -> list[str]:
    """n_runs verified runs over n_submissions submissions of the golden track; returns the run ids."""
    from leaderboard.db import prepare_database
    from leaderboard.models import Run, Submission, Submitter, TrackRow, Verification, utcnow
    from leaderboard.ranking import update_standing

    engine = prepare_database(settings)
    rng = random.Random(0)
    with Session(engine) as session:
        track = session.exec(select(TrackRow).where(TrackRow.name == "golden")).one()
        submitters = [Submitter(name=f"user{i}") for i in range(max(1, n_submissions // 5))]
        session.add_all(submitters)
        session.flush()
        subs = [
            Submission(submitter_id=submitters[i % len(submitters)].id, name=f"sub{i}", code_hash=f"{i:064x}")
            for i in range(n_submissions)
        ]
        session.add_all(subs)
        session.commit()
        now, run_ids, runs, verifications = utcnow(), [], [], []
        record = {
            "schema_version": 1,
            "config": {f"field_{k}": k for k in range(60)},  # ~ a real record's size
            "provenance": {
                "code": {p: "0" * 64 for p in ("baseline", "eval", "harness")},
                "environment": {f"package_{k}": "1.0" for k in range(40)},
            },
        }
        for i in range(n_runs):
            sub = subs[i % n_submissions]
            base = 60 + 5 * (sub.id % 37)
            t = base + rng.gauss(0, 0.5)
            run_id = f"bench-{i:06d}"
            run_ids.append(run_id)
            runs.append(
                dict(
                    run_id=run_id,
                    bundle_sha256=f"{i:064x}",
                    track_id=track.id,
                    submission_id=sub.id,
                    submitter_id=sub.submitter_id,
                    seed=i,
                    status="completed",
                    official=True,
                    train_time_s=t,
                    steps=40,
                    metric="val_bpb",
                    metric_value=6.0,
                    val_bpb=6.0,
                    tokens_per_s=30000.0,
                    mfu=1.5,
                    energy_kwh=1e-4,
                    cost_usd=1e-3,
                    hardware="CPU, 2 threads",
                    uploaded_at=now - timedelta(seconds=n_runs - i),
                    files={},
                    record=record,
                )
            )
        session.exec(insert(Run), params=runs)
        session.commit()
        ids = dict(session.exec(select(Run.run_id, Run.id)).all())
        for i, run_id in enumerate(run_ids):
            verifications.append(
                dict(
                    run_pk=ids[run_id],
                    status="verified",
                    attempts=1,
                    reasons=[],
                    recomputed_val_bpb=6.0 + 0.01 * rng.random(),
                    recomputed_train_time_s=runs[i]["train_time_s"],
                    finished_at=now,
                )
            )
        session.exec(insert(Verification), params=verifications)
        session.commit()
        for sub in subs:
            update_standing(session, track=track, submission_id=sub.id)
    return run_ids


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


READS = {
    "board": lambda ids: "/tracks/golden",
    "api": lambda ids: "/api/tracks/golden/leaderboard",
    "runs": lambda ids: "/api/runs?track=golden&limit=50",
    "run": lambda ids: f"/api/runs/{random.choice(ids)}",
}


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status (the body is read and dropped).

    A bare asyncio client: a full HTTP library would spend more of the shared CPU than the server does.
    """
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return status


async def load(host: str, port: int, run_ids: list[str], clients: int, seconds: float, reads: list[str]) -> dict:
    latencies: dict[str, list[float]] = {k: [] for k in reads}
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def client(i: int):
        reader, writer = await asyncio.open_connection(host, port)
        k = i
        try:
            while time.monotonic() < deadline:
                name = reads[k % len(reads)]
                k += 1
                t0 = time.perf_counter()
                status = await _get(reader, writer, READS[name](run_ids))
                latencies[name].append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"{name}: {status}")
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    if errors:
        print(f"{len(errors)} errors, e.g. {errors[:3]}")
    return latencies


def wait_up(base: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the server did not come up")


def time_verification(tmp: Path) -> float:
    from leaderboard.crud import create_run, get_or_create_submission, get_track
    from leaderboard.db import prepare_database
    from leaderboard.models import Submitter
    from leaderboard.uploads import stage, store
    from leaderboard.verifier import verify_worker
    from tests import leaderboard_fixtures as fixtures

    settings = fixtures.server_settings(tmp / "verify")
    engine = prepare_database(settings)
    paths = fixtures.make_bundle(tmp / "bundle", run_id="verify-me", seed=1)
    staged = stage(
        storage_dir=settings.storage_dir,
        files={n: open(p, "rb") for n, p in paths.items()},
        max_total_bytes=settings.max_upload_bytes,
        max_file_bytes=settings.max_file_bytes,
    )
    store(staged, storage_dir=settings.storage_dir)
    with Session(engine) as session:
        who = Submitter(name="bench")
        session.add(who)
        session.commit()
        sub = get_or_create_submission(
            session, submitter=who, name="golden-sub", code_hash=None, description="", link=""
        )
        create_run(
            session,
            record=staged.record,
            bundle_sha256=staged.sha256,
            files=staged.files,
            track=get_track(session, name="golden"),
            submission=sub,
            submitter=who,
        )
    t0 = time.perf_counter()
    assert verify_worker(once=True, settings=settings) == 1
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--submissions", type=int, default=200)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--reads", nargs="+", default=list(READS), choices=list(READS), help="which reads to mix")
    p.add_argument("--verify", action="store_true", help="also time the verification of one golden bundle")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    from tests import leaderboard_fixtures as fixtures

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = fixtures.server_settings(tmp)
        t0 = time.perf_counter()
        run_ids = populate(settings, args.runs, args.submissions)
        print(f"populated {args.runs:,} runs over {args.submissions} submissions in {time.perf_counter() - t0:.1f}s")
        env = {
            **os.environ,
            "LEADERBOARD_DATABASE_URL": settings.database_url,
            "LEADERBOARD_STORAGE_DIR": str(settings.storage_dir),
            "LEADERBOARD_TRACK_FILES": json.dumps([str(f) for f in settings.track_files]),
        }
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "leaderboard.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        server = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{args.port}"
        try:
            wait_up(base, server)
            latencies = asyncio.run(load("127.0.0.1", args.port, run_ids, args.clients, args.seconds, args.reads))
        finally:
            server.terminate()
            server.wait(30)
        figures = {
            "runs": args.runs,
            "clients": args.clients,
            "seconds": args.seconds,
            "reads": {},
            "load_average": os.getloadavg(),
        }
        print(f"{'read':6s} {'n':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        for name, xs in latencies.items():
            row = {
                "n": len(xs),
                "req_per_s": len(xs) / args.seconds,
                "p50_ms": 1e3 * statistics.median(xs),
                "p99_ms": 1e3 * percentile(xs, 0.99),
                "max_ms": 1e3 * max(xs),
            }
            figures["reads"][name] = row
            print(
                f"{name:6s} {row['n']:7d} {row['req_per_s']:8.1f} "
                f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['max_ms']:8.1f}"
            )
        if args.verify:
            figures["verify_s"] = time_verification(tmp)
            print(f"verification of one golden CPU bundle: {figures['verify_s']:.1f}s")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
