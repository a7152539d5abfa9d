"""The verifier: claims pending runs, runs every check in a limited child process, records the verdict.

    speedrun verify --worker            # leaderboard.verifier.verify_worker(once=False): poll forever
    speedrun verify --worker --once     # verify (and re-run) what is pending now, then exit

The same pool takes reproduction jobs when no verification is waiting (leaderboard/reproduction.py: a
verified run of a track that opts in, re-run in the sandbox and compared with its claim).

Several workers can share one database (leaderboard/jobqueue.py: SELECT … FOR UPDATE SKIP LOCKED on
PostgreSQL, a guarded UPDATE on SQLite). A claim is a lease, renewed while its child runs: a job whose
worker died is claimed again after Settings.claim_lease_s, never while its worker lives.

The checks run in leaderboard/verify_child.py behind leaderboard/isolation.py's walls (the sandbox; rlimits without it:
memory, CPU, file size, wall clock): no bundle can stop the worker. A child that dies, or a check that reports
"error" (the server could not check: missing data, no sandbox for an open run), leaves the job pending, retried after
Settings.retry_after_s; after Settings.max_attempts the run ends "error", for an admin (reverify
queues it again). An open run's model is scored after the child, by leaderboard/open_metric.py: only in
the sandbox, its logits scored by this worker (the worker never imports submission code). Any failed check
rejects the run with every reason; a "flag" (held-out gap) verifies it but holds it out of the ranking until
an admin clears it.
"""

import json
import logging
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, select

import sandbox
from leaderboard import crud, isolation, jobqueue, open_metric, ranking, reproduction
from leaderboard.checks import CheckResult
from leaderboard.db import prepare_database
from leaderboard.models import Check, Reproduction, Run, TrackRow, Verification, utcnow
from leaderboard.redact import redact
from leaderboard.resources import server_facts
from leaderboard.settings import Settings, database_url, get_settings
from protocol.record import parse_record

log = logging.getLogger("leaderboard.verifier")
TRACK_FIELDS = (
    "name",
    "version",
    "metric",
    "higher_is_better",
    "hardware_kind",
    "gpu_model",
    "gpu_count",
    "cpu_threads",
)


def claim(session: Session, *, worker_id: str, lease_s: float) -> Verification | None:
    """Take the oldest claimable pending verification for `worker_id`, or None when there is none."""
    return jobqueue.claim(session, Verification, worker_id=worker_id, lease_s=lease_s)


def renew(engine, *, job_id: int, worker_id: str) -> bool:
    """Extend a held lease (claimed_at = now); False when the job is no longer this worker's."""
    return jobqueue.renew(engine, Verification, job_id=job_id, worker_id=worker_id)


def bundle_dir(run: Run, settings: Settings) -> Path:
    return Path(settings.storage_dir) / "bundles" / run.bundle_sha256


def job_input(run: Run, track: TrackRow, settings: Settings) -> bytes:
    """What the child needs: the record, the track, where the bundle lies, the server's facts."""
    return json.dumps(
        {
            "record": run.record,
            "track": {k: getattr(track, k) for k in TRACK_FIELDS},
            "spec": track.spec,
            "bundle_dir": str(bundle_dir(run, settings)),
            "facts": server_facts(track, settings).to_json(),
            "telemetry_info": (run.summary or {}).get("telemetry_info"),
        }
    ).encode()


def limits_of(settings: Settings) -> isolation.Limits:
    return isolation.Limits(
        memory_bytes=settings.verify_memory_bytes,
        cpu_s=settings.verify_cpu_s,
        wall_s=settings.verify_wall_s,
        file_bytes=settings.verify_file_bytes,
        threads=settings.verify_threads,
    )


def child_reads(run: Run, track: TrackRow, settings: Settings) -> list[Path]:
    """What the verification child reads besides the project: the bundle and the server's copies for the track."""
    facts = server_facts(track, settings)
    paths = [bundle_dir(run, settings)]
    paths += [p for p in (facts.data_dir, facts.tokenizer_dir, facts.eval_bundle) if p is not None and p.exists()]
    return paths + [p for p in facts.heldout_files if p.exists()]


def run_child(run: Run, track: TrackRow, settings: Settings, tick) -> tuple[list[CheckResult], dict]:
    """The child's (results, recomputed); its failure is one "error" result saying why."""
    try:
        out = isolation.run_limited(
            ["-m", "leaderboard.verify_child"],
            job=job_input(run, track, settings),
            limits=limits_of(settings),
            read_only=child_reads(run, track, settings),
            tick=tick,
            tick_s=max(1.0, settings.claim_lease_s / 3),
        )
        answer = json.loads(out)
    except isolation.ChildFailed as e:
        return [CheckResult("verification", "error", e.reason)], {}
    except ValueError:
        return [CheckResult("verification", "error", "the verification answered something that is not JSON")], {}
    results, recomputed = [CheckResult(**r) for r in answer["results"]], answer["recomputed"]
    if (run.record.get("submission") or {}).get("division") == "open" and all(
        r.outcome == "pass" for r in results if r.name == "weights"
    ):
        work_dir = Path(settings.storage_dir) / open_metric.WORK_DIR / run.bundle_sha256
        record = parse_record(run.record, where="the run's record")
        more, values = open_metric.check(
            record, bundle_dir(run, settings), server_facts(track, settings), work_dir=work_dir,
            limits=sandbox.Limits(wall_s=settings.verify_wall_s, memory_bytes=settings.verify_memory_bytes),
            threads=settings.verify_threads or os.cpu_count(), tick=tick,
        )  # fmt: skip
        results, recomputed = results + more, recomputed | values
    return results, recomputed


def verify(session: Session, *, job: Verification, settings: Settings, worker_id: str = "") -> Verification:
    """Run the checks of a claimed job in a limited child and write the verdict, its checks and the standing."""
    t0 = time.perf_counter()
    run = session.get(Run, job.run_pk)
    track = session.get(TrackRow, run.track_id)
    if job.attempts > settings.max_attempts:  # its worker died or lost the lease every time
        results = [
            CheckResult(
                "verification", "error", f"gave up after {settings.max_attempts} attempts: {job.error or 'no answer'}"
            )
        ]
        recomputed = {}
    else:
        engine = session.get_bind()
        results, recomputed = run_child(
            run, track, settings, tick=lambda: renew(engine, job_id=job.id, worker_id=worker_id)
        )
    session.refresh(job)
    if job.status != "pending" or (worker_id and job.claimed_by != worker_id):
        return job  # an admin or another worker took it over meanwhile
    for old in session.exec(select(Check).where(Check.verification_id == job.id)).all():
        session.delete(old)
    for r in results:
        detail = redact(r.detail)
        session.add(Check(verification_id=job.id, name=r.name, outcome=r.outcome, detail=detail, evidence=r.evidence))
    failed = [f"{r.name}: {redact(r.detail)}" for r in results if r.outcome == "fail"]
    errors = [f"{r.name}: {redact(r.detail)}" for r in results if r.outcome == "error"]
    flags = [f"{r.name}: {redact(r.detail)}" for r in results if r.outcome == "flag"]
    job.recomputed_train_time_s = recomputed.get("train_time_s")
    job.recomputed_val_bpb = recomputed.get("val_bpb")
    job.recomputed_core = recomputed.get("core")
    job.recomputed_heldout_bpb = recomputed.get("heldout_bpb")
    job.reasons = failed
    job.duration_s = time.perf_counter() - t0
    if failed:
        job.status, job.error, job.finished_at = "rejected", None, utcnow()
    elif errors and job.attempts >= settings.max_attempts:
        job.status, job.error, job.finished_at = "error", "; ".join(errors), utcnow()
    elif errors:  # the server could not check: leave it pending, retry later
        job.error = "; ".join(errors)
        job.claimed_by = job.claimed_at = None
        job.not_before = utcnow() + timedelta(seconds=settings.retry_after_s)
    else:
        job.status, job.error, job.finished_at = "verified", None, utcnow()
        job.flag = "; ".join(flags) or None
    session.add(job)
    session.commit()
    if job.status == "verified":
        reproduction.maybe_queue(session, run=run, track=track)  # on tracks that opt in: maybe this run, re-run
    crud.store_detail(session, run=run)
    ranking.update_standing(session, track=track, submission_id=run.submission_id)
    session.refresh(job)
    why = "; ".join(failed or errors or flags)
    log.info("run %s: %s%s", run.run_id, job.status, f" ({why})" if why else "")
    return job


def _give_up(engine, model, job_id: int, error: str, settings: Settings) -> None:
    """A job (Verification or Reproduction) that raised in the worker itself: an error attempt, like a dead child."""
    with Session(engine) as session:
        job = session.get(model, job_id)
        if job is None or job.status != "pending":
            return
        jobqueue.retry_later(
            job, error=redact(error), max_attempts=settings.max_attempts, retry_after_s=settings.retry_after_s
        )
        session.add(job)
        session.commit()
        crud.store_detail(session, run=session.get(Run, job.run_pk))


def verify_worker(
    once: bool = False, *, settings: Settings | None = None, poll_s: float = 5.0, worker_id: str | None = None
) -> int:
    """`speedrun verify --worker [--once]`: verify pending runs (forever, or until none is left); returns how many.

    Nothing a job does ends the loop: an exception in the worker's own code is logged and becomes an error
    attempt of that job; a database that went away is waited for."""
    settings = settings or get_settings()
    engine = prepare_database(settings)
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    no_reruns = reproduction.local_unavailable(settings)
    if no_reruns is not None:  # weights are still verified: the verification child runs no uploaded code
        log.warning("verifier: re-runs are off on this worker (runner machines can take them): %s", no_reruns)
    done, expired_until = 0, utcnow()
    while True:
        job_id, model = None, Verification
        try:
            with Session(engine) as session:
                now = utcnow()  # registered runs whose deadline passed are misses from now on
                ranking.expire_registrations(session, since=expired_until, until=now)
                expired_until = now
                job = claim(session, worker_id=worker_id, lease_s=settings.claim_lease_s)
                if job is not None:
                    job_id = job.id
                    verify(session, job=job, settings=settings, worker_id=worker_id)
                    done += 1
                    continue
                rerun = None if no_reruns else reproduction.claim_local(session, worker_id=worker_id, settings=settings)
                if rerun is not None:
                    job_id, model = rerun.id, Reproduction
                    reproduction.reproduce_locally(session, job=rerun, settings=settings, worker_id=worker_id)
                    done += 1
                    continue
        except Exception:  # noqa: BLE001 -- the worker outlives any one job and any one outage
            log.exception("verifier: %s", f"job {job_id} failed in the worker" if job_id else "database error")
            if job_id is not None:
                try:
                    _give_up(engine, model, job_id, traceback.format_exc(limit=1).strip().splitlines()[-1], settings)
                    done += 1
                    continue
                except Exception:  # noqa: BLE001 -- the database itself is away: wait and poll again
                    log.exception("verifier: could not record the failure of job %s", job_id)
        if once:
            return done
        time.sleep(poll_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(f"verified {verify_worker(once=True)} runs against {database_url(get_settings())}")
