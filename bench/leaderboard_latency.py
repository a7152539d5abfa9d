"""Leaderboard latency under concurrent clients (reads, or reads mixed with uploads and a verify worker).

    python -m bench.leaderboard_latency                                    # 10,000 runs, 100 clients, 20 s
    python -m bench.leaderboard_latency --runs 1000 --clients 20 --seconds 5 --verify   # a short version
    python -m bench.leaderboard_latency --mixed --reads board api runs run page       # + uploads + a worker
    python -m bench.leaderboard_latency --database-url postgresql+psycopg://... --workers 2

It fills a fresh database (SQLite under a temp dir, or the empty PostgreSQL --database-url names)
with `--runs` verified runs of the golden test track spread over `--submissions` submissions (rows
written directly, standings computed by the real ranking code), starts `uvicorn
leaderboard.app:create_app --factory --workers N` in its own process, and has `--clients` concurrent
asyncio clients (bare keep-alive HTTP/1.1) loop over the reads named by --reads for `--seconds`:
    board   GET /tracks/golden                       the board page (HTML, record chart)
    api     GET /api/tracks/golden/leaderboard       the board as JSON
    runs    GET /api/runs?track=golden&limit=50      a page of runs
    run     GET /api/runs/{random run id}            one run's detail
    page    GET /runs/{random run id}                one run's page (HTML, charts)
With --mixed, `--uploaders` clients also upload golden bundles (as `speedrun submit` does, each
with its own weights) and a `speedrun verify --worker` process verifies them meanwhile: the upload
row is each upload's latency. It prints n, errors, p50/p99/max latency and requests/s per route. The
rate limits stay on, set high enough for one address, so their cost is in the figures. With
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
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session, select

UNLIMITED = "1000000/minute"  # the limiter runs (its cost is measured) but never refuses one address


def populate(settings, n_runs: int, n_submissions: int) -> list[str]:
    """n_runs verified runs over n_submissions submissions of the golden track; returns the run ids."""
    from leaderboard.crud import RUN_DETAIL, run_detail
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
        summary = {  # what leaderboard/summary.py stores for a 40-step CPU run: a run page draws it
            "loss": [[s, 8.3 - s / 40, 8.35 - s / 40] for s in range(40)],
            "val": [[40, 6.0]],
            "telemetry": {
                label: [[float(t), 50.0 + t % 7] for t in range(100)]
                for label in ("CPU package power (RAPL, W)", "CPU utilization (%)", "process memory (RSS, GiB)")
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
                    track_version=track.version,
                    uploaded_at=now - timedelta(seconds=n_runs - i),
                    files={},
                    record=record,
                    summary=summary,
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
        # What the server stores at upload and verification: each run's API answer, built once.
        details = [
            {"pk": run.id, "detail": RUN_DETAIL.dump_json(run_detail(session, run=run)).decode()}
            for run in session.exec(select(Run)).all()
        ]
        session.connection().execute(
            update(Run).where(Run.id == bindparam("pk")).values(detail=bindparam("detail")), details
        )
        session.commit()
    return run_ids


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


READS = {
    "board": lambda ids: "/tracks/golden",
    "api": lambda ids: "/api/tracks/golden/leaderboard",
    "runs": lambda ids: "/api/runs?track=golden&limit=50",
    "run": lambda ids: f"/api/runs/{random.choice(ids)}",
    "page": lambda ids: f"/runs/{random.choice(ids)}",
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
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,  # a 304 has no body
    )
    await reader.readexactly(length)
    return status


async def load(
    host: str, port: int, run_ids: list[str], clients: int, seconds: float, reads: list[str], errors: list[str]
) -> dict:
    latencies: dict[str, list[float]] = {k: [] for k in reads}
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
    return latencies


def _load_in_process(args: tuple) -> tuple[dict, list[str]]:
    """One client process's share of the load (--client-procs): its latencies and errors."""
    host, port, run_ids, clients, seconds, reads, uvloop_client = args
    errors: list[str] = []
    run = asyncio.run
    if uvloop_client:
        import uvloop

        run = uvloop.run
    return run(load(host, port, run_ids, clients, seconds, reads, errors)), errors


def load_processes(procs: int, host, port, run_ids, clients, seconds, reads, errors, uvloop_client) -> dict:
    """The clients split over `procs` processes (one asyncio loop cannot keep up with a fast server)."""
    from concurrent.futures import ProcessPoolExecutor

    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    with ProcessPoolExecutor(procs) as pool:
        parts = list(
            pool.map(_load_in_process, [(host, port, run_ids, n, seconds, reads, uvloop_client) for n in shares if n])
        )
    latencies: dict[str, list[float]] = {k: [] for k in reads}
    for part, errs in parts:
        for k, xs in part.items():
            latencies[k] += xs
        errors += errs
    return latencies


def make_bundles(tmp: Path, n: int) -> list[bytes]:
    """n golden bundles as .tar.gz, each with its own run id and weights (as `speedrun submit` packs them)."""
    import io
    import tarfile

    from tests import leaderboard_fixtures as fixtures

    out, cache = [], {}
    for i in range(n):
        paths = fixtures.make_bundle(tmp / f"up{i}", run_id=f"upload-{i:04d}", seed=1000 + i, provenance_cache=cache)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            for name, path in paths.items():
                tar.add(path, arcname=name)
        out.append(buf.getvalue())
    return out


def upload_loop(base: str, token: str, bundles: list[bytes], deadline: float, latencies: list, errors: list) -> None:
    import httpx

    with httpx.Client(timeout=120) as client:
        while bundles and time.monotonic() < deadline:
            body = bundles.pop()
            t0 = time.perf_counter()
            r = client.post(
                base + "/api/runs",
                files={"bundle": ("bundle.tar.gz", body, "application/gzip")},
                headers={"Authorization": f"Bearer {token}"},
            )
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 201:
                errors.append(f"upload: {r.status_code} {r.text[:100]}")


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
    from fastapi.testclient import TestClient

    from leaderboard.app import create_app
    from leaderboard.tokens import create_token
    from leaderboard.verifier import verify_worker
    from tests import leaderboard_fixtures as fixtures

    settings = fixtures.server_settings(tmp / "verify")
    client = TestClient(create_app(settings))
    token = create_token("bench", settings=settings)
    paths = fixtures.make_bundle(tmp / "bundle", run_id="verify-me", seed=1)
    files = {n.split(".")[0] if n != "model.safetensors" else "model": p.read_bytes() for n, p in paths.items()}
    files = {{"train": "log"}.get(k, k): v for k, v in files.items()}
    r = client.post("/api/runs", files=files, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
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
    p.add_argument("--reads", nargs="+", default=["board", "api", "runs", "run"], choices=list(READS))
    p.add_argument("--workers", type=int, default=1, help="server processes (uvicorn --workers)")
    p.add_argument("--database-url", default=None, help="an empty PostgreSQL to use instead of SQLite")
    p.add_argument("--mixed", action="store_true", help="also upload bundles and run a verify worker")
    p.add_argument("--uploaders", type=int, default=2)
    p.add_argument("--no-worker", action="store_true", help="--mixed without the verify worker (uploads only)")
    p.add_argument("--bundles", type=int, default=24, help="bundles made for the uploaders (each ~11 MB)")
    p.add_argument("--client-procs", type=int, default=1, help="split the clients over this many processes")
    p.add_argument("--uvloop-client", action="store_true", help="the clients' event loop is uvloop's")
    p.add_argument("--verify", action="store_true", help="also time the verification of one golden bundle")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    from tests import leaderboard_fixtures as fixtures

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = fixtures.server_settings(tmp, database_url=args.database_url)
        t0 = time.perf_counter()
        run_ids = populate(settings, args.runs, args.submissions)
        print(f"populated {args.runs:,} runs over {args.submissions} submissions in {time.perf_counter() - t0:.1f}s")
        resources = {n: r.model_dump(mode="json") for n, r in settings.track_resources.items()}
        env = {
            **os.environ,
            "LEADERBOARD_DATABASE_URL": settings.database_url,
            "LEADERBOARD_STORAGE_DIR": str(settings.storage_dir),
            "LEADERBOARD_TRACK_FILES": json.dumps([str(f) for f in settings.track_files]),
            "LEADERBOARD_TRACK_RESOURCES": json.dumps(resources),
            "LEADERBOARD_RATE_LIMIT_PER_IP": UNLIMITED,
            "LEADERBOARD_RATE_LIMIT_PER_TOKEN": UNLIMITED,
        }
        bundles, token = [], None
        if args.mixed:
            from leaderboard.tokens import create_token

            t0 = time.perf_counter()
            bundles = make_bundles(tmp / "bundles", args.bundles)
            token = create_token("uploader", settings=settings)
            print(f"made {len(bundles)} bundles in {time.perf_counter() - t0:.1f}s")
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
            "--workers",
            str(args.workers),
        ]
        server = subprocess.Popen(cmd, env=env)
        worker = None
        base = f"http://127.0.0.1:{args.port}"
        errors: list[str] = []
        uploads: list[float] = []
        try:
            wait_up(base, server)
            threads = []
            if args.mixed and not args.no_worker:
                worker_cmd = [
                    sys.executable,
                    "-c",
                    "from leaderboard.verifier import verify_worker; verify_worker(poll_s=1)",
                ]
                worker = subprocess.Popen(worker_cmd, env=env)
            if args.mixed:
                deadline = time.monotonic() + args.seconds
                threads = [
                    threading.Thread(target=upload_loop, args=(base, token, bundles, deadline, uploads, errors))
                    for _ in range(args.uploaders)
                ]
                for t in threads:
                    t.start()
            latencies = load_processes(
                args.client_procs,
                "127.0.0.1",
                args.port,
                run_ids,
                args.clients,
                args.seconds,
                args.reads,
                errors,
                args.uvloop_client,
            )
            for t in threads:
                t.join()
            if uploads:
                latencies["upload"] = uploads
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
        figures = {
            "runs": args.runs,
            "clients": args.clients,
            "seconds": args.seconds,
            "workers": args.workers,
            "database": "postgresql" if args.database_url else "sqlite",
            "mixed": args.mixed,
            "client_procs": args.client_procs,
            "uvloop_client": args.uvloop_client,
            "reads": {},
            "load_average": os.getloadavg(),
        }
        print(f"{'route':6s} {'n':>7s} {'errors':>6s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        for name, xs in latencies.items():
            if not xs:
                continue
            row = {
                "n": len(xs),
                "errors": sum(e.startswith(name + ":") for e in errors),
                "req_per_s": len(xs) / args.seconds,
                "p50_ms": 1e3 * statistics.median(xs),
                "p99_ms": 1e3 * percentile(xs, 0.99),
                "max_ms": 1e3 * max(xs),
            }
            figures["reads"][name] = row
            print(
                f"{name:6s} {row['n']:7d} {row['errors']:6d} {row['req_per_s']:8.1f} "
                f"{row['p50_ms']:8.1f} {row['p99_ms']:8.1f} {row['max_ms']:8.1f}"
            )
        if errors:
            print(f"{len(errors)} errors, e.g. {errors[:3]}")
        if args.verify:
            figures["verify_s"] = time_verification(tmp)
            print(f"verification of one golden CPU bundle: {figures['verify_s']:.1f}s")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
