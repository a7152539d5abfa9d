"""The verification worker: claims pending runs, runs every check, records the verdict and the standings.

    speedrun verify --worker            # leaderboard.worker.verify_worker(once=False): poll forever
    speedrun verify --worker --once     # verify what is pending now, then exit

Several workers can share one PostgreSQL database: a job is claimed with SELECT … FOR UPDATE SKIP
LOCKED and a guarded UPDATE in the same transaction, so no two workers take the same job (on SQLite,
whose writers are serialised, the guarded UPDATE alone decides). A claim is a lease: a job whose
worker died is claimed again after Settings.claim_lease_s. A job the server could not check (its
data or tokenizer is missing: a check's outcome is "error") stays pending and is retried after
Settings.retry_after_s; any failed check rejects the run with every reason.
"""

import logging
import os
import socket
import time
import traceback
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import or_, update
from sqlmodel import Session, select

from leaderboard import checks
from leaderboard.bundle import read_jsonl
from leaderboard.models import Check, Run, Track, Verification, utcnow
from leaderboard.ranking import update_standing
from leaderboard.settings import Settings, TrackResources, database_url, get_settings

log = logging.getLogger("leaderboard.worker")


def claim(session: Session, *, worker_id: str, lease_s: float) -> Verification | None:
    """Take the oldest claimable pending job for `worker_id`, or None when there is none."""
    now = utcnow()
    query = (
        select(Verification)
        .where(
            Verification.status == "pending",
            or_(Verification.claimed_at.is_(None), Verification.claimed_at < now - timedelta(seconds=lease_s)),
            or_(Verification.not_before.is_(None), Verification.not_before <= now),
        )
        .order_by(Verification.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job = session.exec(query).first()
    if job is None:
        session.rollback()
        return None
    taken = session.exec(
        update(Verification)
        .where(
            Verification.id == job.id,
            Verification.status == "pending",
            Verification.claimed_at == job.claimed_at
            if job.claimed_at is not None
            else Verification.claimed_at.is_(None),
        )
        .values(claimed_by=worker_id, claimed_at=now, attempts=Verification.attempts + 1)
    ).rowcount
    session.commit()
    if taken != 1:
        return None  # another worker won it between the select and the update (SQLite only)
    session.refresh(job)
    return job


@lru_cache(maxsize=64)
def _tree_hash(path: str) -> str:
    from harness.provenance import ALL_FILES, NOT_CONTENT, tree_hash

    return tree_hash(path, include=ALL_FILES, exclude=NOT_CONTENT)


@lru_cache(maxsize=4)
def _server_code_hashes(repo_root: str) -> dict:
    from harness.provenance import code_hashes

    return code_hashes(repo_root)


def server_facts(track: Track, settings: Settings) -> checks.ServerFacts:
    """The server's own copies of what a run of `track` must match (see Settings.track_resources)."""
    res = settings.track_resources.get(track.name) or TrackResources()
    spec = track.spec or {}
    data_dir = res.data_dir
    if data_dir is None and _get(spec, "dataset", "default_dir"):
        from harness.runner import data_dir_for
        from harness.tracks import load_track

        data_dir = data_dir_for(load_track(spec["path"]), None) if spec.get("path") else None
    data_dir = data_dir if data_dir is not None and Path(data_dir).is_dir() else None
    data_hash = track.data_hash or (_data_hash(data_dir, spec) if data_dir else None)
    tokenizer_dir = res.tokenizer_dir
    if tokenizer_dir is None and data_hash:  # where `speedrun run` caches the tokenizer it trained
        from harness.runner import CACHE

        vocab = _get(spec, "tokenizer", "vocab_size")
        tokenizer_dir = CACHE / "tokenizers" / f"{track.name}-v{vocab}-{data_hash[:12]}"
    tokenizer_dir = tokenizer_dir if tokenizer_dir is not None and Path(tokenizer_dir).is_dir() else None
    return checks.ServerFacts(
        code_hashes=_server_code_hashes(str(settings.repo_root)),
        frozen_packages=tuple(settings.frozen_packages),
        tokenizer_dir=tokenizer_dir,
        tokenizer_hash=_tree_hash(str(tokenizer_dir)) if tokenizer_dir else None,
        data_dir=data_dir,
        data_hash=data_hash,
        eval_bundle=res.eval_bundle,
        device=settings.verify_device,
        bpb_abs_tolerance=settings.bpb_abs_tolerance,
        core_abs_tolerance=settings.core_abs_tolerance,
        time_rel_tolerance=settings.time_rel_tolerance,
        time_abs_tolerance_s=settings.time_abs_tolerance_s,
    )


def _get(d, *path):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _data_hash(data_dir: Path, spec: dict) -> str | None:
    from baseline.dataset import list_shards
    from harness.provenance import data_hash

    files = list_shards(data_dir)
    names = _get(spec, "dataset", "shards")
    if names:
        files = [f for f in files if f.name in set(names)]
    return data_hash(files) if files else None


def run_checks(run: Run, track: Track, bundle_dir: Path, facts: checks.ServerFacts) -> tuple[list, dict]:
    """Every check of one run, in order; (results, recomputed values)."""
    record = run.record or {}
    events, telemetry = read_jsonl(bundle_dir / "events.jsonl"), read_jsonl(bundle_dir / "telemetry.jsonl")
    results = [
        checks.check_record(record, track),
        checks.check_code(record, facts),
        checks.check_data(record, facts),
        checks.check_tokenizer(record, facts),
        checks.check_hardware(record, telemetry, track),
    ]
    timing, train_time_s = checks.check_train_time(record, events, facts)
    results.append(timing)
    recomputed = {"train_time_s": train_time_s}
    weights, model_config = checks.check_weights(bundle_dir)
    results.append(weights)
    if model_config is None:
        results.append(checks.CheckResult("metric", "skip", "not recomputed: the weights could not be read safely"))
        return results, recomputed
    try:
        metric_results, values = checks.check_metric(record, bundle_dir, track, facts)
        results += metric_results
        recomputed |= values
    except ValueError as e:  # the bundle's fault: corrupt tensors, a vocab that does not fit the tokenizer
        results.append(checks.CheckResult("metric", "fail", f"the model could not be evaluated: {e}"))
    except Exception as e:  # noqa: BLE001 -- the server's fault (OOM, missing files): retry later
        results.append(
            checks.CheckResult(
                "metric", "error", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc(limit=5)}
            )
        )
    return results, recomputed


def verify(session: Session, *, job: Verification, settings: Settings) -> Verification:
    """Run the checks of a claimed job and write the verdict, its checks and the standing."""
    t0 = time.perf_counter()
    run = session.get(Run, job.run_pk)
    track = session.get(Track, run.track_id)
    bundle_dir = Path(settings.storage_dir) / "bundles" / run.bundle_sha256
    results, recomputed = run_checks(run, track, bundle_dir, server_facts(track, settings))
    for old in session.exec(select(Check).where(Check.verification_id == job.id)).all():
        session.delete(old)
    for r in results:
        session.add(Check(verification_id=job.id, name=r.name, outcome=r.outcome, detail=r.detail, evidence=r.evidence))
    failed = [f"{r.name}: {r.detail}" for r in results if r.outcome == "fail"]
    errors = [f"{r.name}: {r.detail}" for r in results if r.outcome == "error"]
    job.recomputed_train_time_s = recomputed.get("train_time_s")
    job.recomputed_val_bpb = recomputed.get("val_bpb")
    job.recomputed_core = recomputed.get("core")
    job.reasons = failed
    job.duration_s = time.perf_counter() - t0
    if failed:
        job.status, job.error, job.finished_at = "rejected", None, utcnow()
    elif errors:  # the server could not check: leave it pending, retry later
        job.error = "; ".join(errors)
        job.claimed_by = job.claimed_at = None
        job.not_before = utcnow() + timedelta(seconds=settings.retry_after_s)
    else:
        job.status, job.error, job.finished_at = "verified", None, utcnow()
    session.add(job)
    session.commit()
    update_standing(session, track=track, submission_id=run.submission_id)
    session.refresh(job)
    log.info("run %s: %s%s", run.run_id, job.status, f" ({'; '.join(failed or errors)})" if failed or errors else "")
    return job


def verify_worker(
    once: bool = False, *, settings: Settings | None = None, poll_s: float = 5.0, worker_id: str | None = None
) -> int:
    """`speedrun verify --worker [--once]`: verify pending runs (forever, or until none is left); returns how many."""
    from leaderboard.app import prepare_database

    settings = settings or get_settings()
    engine = prepare_database(settings)
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    done = 0
    while True:
        with Session(engine) as session:
            job = claim(session, worker_id=worker_id, lease_s=settings.claim_lease_s)
            if job is not None:
                verify(session, job=job, settings=settings)
                done += 1
                continue
        if once:
            return done
        time.sleep(poll_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(f"verified {verify_worker(once=True)} runs against {database_url(get_settings())}")
