"""Reproduction jobs: which verified runs are re-run, who re-runs them, and what their verdict does.

    maybe_queue(session, run=run, track=track)           # after a run verifies (verifier.py)
    job = claim_local(session, worker_id=..., settings=...)   # the verify workers' pool: CPU tracks by = "server"
    reproduce_locally(session, job=job, settings=..., worker_id=...)   # re-run in the sandbox, compare, record
    finish(session, job=job, result=result, settings=...)     # a runner machine's result (routers/runners.py)

Opt-in per track (protocol.tracks.Reproduce, a `[reproduce]` table): when a run of a submission verifies
and fewer than `runs_per_submission` of that submission's runs on the track have been chosen, one of its
counted verified runs not yet chosen is picked at random (secrets: the submitter cannot predict which).
While runs the submission registered (routers/registrations.py) are still due, the choice waits for them,
so it falls on any seed of the campaign, the last as likely as the first.

A job is a row of the same kind of queue as verification (leaderboard/jobqueue.py): the verify workers
take jobs of tracks `by = "server"` they can run (CPU, enough cores, bubblewrap usable); runner machines
take jobs of any opted-in track whose hardware they have, over the API. Either way the re-run happens in
the sandbox (protocol/reproduce.py: the project, the track's shards and tokenizer read-only, a private
work dir, no network, none of the server's environment, limits) and the server compares the result with
the claim (leaderboard/comparison.py). A re-run that did not finish is retried after
Settings.retry_after_s, at most Settings.max_attempts times, then ends "error". Nothing is shown as
reproduced before the comparison is written, in one transaction with its status.

Without bubblewrap the workers re-run nothing (`local_unavailable` says why, in one line with the fix,
and the run page shows it); their jobs wait for a runner machine.
"""

import logging
import os
import secrets
import tempfile
import time
from pathlib import Path

from sqlmodel import Session, col, select

import sandbox
from leaderboard import comparison, crud, jobqueue, members, ranking
from leaderboard.models import Registration, Reproduction, Run, TrackRow, Verification, utcnow
from leaderboard.redact import redact
from leaderboard.resources import server_facts
from leaderboard.settings import Settings
from protocol.record import SubmissionRef, parse_record
from protocol.reproduce import (
    ReproduceJob,
    ReproduceResult,
    WorkOrder,
    collect_result,
    prepare_work_dir,
    progress,
    rerun_command,
    sandbox_args,
    this_machine,
)
from protocol.source import SOURCE_FILE
from protocol.timing import last_per_step
from protocol.tracks import Reproduce, Track, track_from_dict

log = logging.getLogger("leaderboard.reproduction")


def rule_of(track: TrackRow) -> Reproduce | None:
    """The track's `[reproduce]` table (None: its runs are never re-run)."""
    return track_from_dict(track.spec).reproduce if track.spec else None


# ------------------------------------------------------------------ choosing runs


def _due_registrations(session: Session, *, run: Run, track: TrackRow) -> int:
    """Runs the submitter registered for this submission and track that have not arrived and are not late."""
    name = (run.record or {}).get("submission", {}).get("name")
    regs = session.exec(
        select(Registration.run_id, Registration.deadline).where(
            Registration.submitter_id == run.submitter_id,
            Registration.track_id == track.id,
            Registration.track_version == track.version,
            Registration.submission_name == name,
        )
    ).all()
    arrived = set(session.exec(select(Run.run_id).where(col(Run.run_id).in_([r for r, _ in regs]))).all())
    now = utcnow()
    return sum(r not in arrived and (d if d.tzinfo else d.replace(tzinfo=now.tzinfo)) > now for r, d in regs)


def maybe_queue(session: Session, *, run: Run, track: TrackRow) -> list[Reproduction]:
    """After `run` verified: choose at random which of its submission's runs are re-run, up to the track's quota."""
    rule = rule_of(track)
    if rule is None or _due_registrations(session, run=run, track=track):
        return []
    rows = session.exec(
        select(Run, Verification)
        .join(Verification, Verification.run_pk == Run.id)
        .where(Run.track_id == track.id, Run.submission_id == run.submission_id)
    ).all()
    chosen = set(
        session.exec(select(Reproduction.run_pk).where(col(Reproduction.run_pk).in_([r.id for r, _ in rows]))).all()
    )
    candidates = [r for r, _ in ranking.counted(rows, track) if r.id not in chosen]
    wanted = max(0, min(rule.runs_per_submission - len(chosen), len(candidates)))  # an admin may have queued more
    picks = secrets.SystemRandom().sample(candidates, wanted)
    jobs = [Reproduction(run_pk=r.id) for r in picks]
    for job in jobs:
        session.add(job)
    session.commit()
    for r in picks:
        crud.store_detail(session, run=r)
        log.info("run %s: chosen for reproduction", r.run_id)
    return jobs


def requeue(session: Session, *, run: Run, track: TrackRow) -> Reproduction:
    """An admin's: queue `run`'s re-run again (its last verdict cleared), or for the first time."""
    if rule_of(track) is None:
        raise ValueError(f"track {track.name} has no [reproduce] table: its runs are not re-run")
    if crud.verification_of(session, run=run).status != "verified":
        raise ValueError(f"run {run.run_id} is not verified: only verified runs are re-run")
    job = crud.reproduction_of(session, run=run) or Reproduction(run_pk=run.id)
    job.sqlmodel_update(
        {"status": "pending", "attempts": 0, "claimed_by": None, "claimed_at": None, "not_before": None,
         "queued_at": utcnow(), "finished_at": None, "duration_s": None, "progress": None, "error": None,
         "reasons": [], "evidence": None, "time_ratio": None, "reproduced_by": None, "result": None}
    )  # fmt: skip
    session.add(job)
    session.commit()
    crud.store_detail(session, run=run)
    ranking.update_standing(session, track=track, submission_id=run.submission_id)
    session.refresh(job)
    return job


# ------------------------------------------------------------------ claiming


def local_unavailable(settings: Settings) -> str | None:
    """Why this server's workers re-run nothing (None when they do): one line with the fix."""
    if not settings.reproduce_locally:
        return "this server's workers do not re-run submissions (LEADERBOARD_REPRODUCE_LOCALLY=false): runners do"
    why = sandbox.available()
    return None if why is None else f"this server cannot re-run submissions: {why}"


def _eligible(session: Session, fits) -> list[int]:
    return [t.id for t in session.exec(select(TrackRow)).all() if (rule := rule_of(t)) is not None and fits(t, rule)]


def claim_local(session: Session, *, worker_id: str, settings: Settings) -> Reproduction | None:
    """A job for the verify workers: a `by = "server"` CPU track this machine has the cores for."""
    cores = len(os.sched_getaffinity(0))
    ids = _eligible(
        session, lambda t, rule: rule.by == "server" and t.hardware_kind == "cpu" and (t.cpu_threads or 1) <= cores
    )
    if not ids:
        return None
    where = (Reproduction.run_pk.in_(select(Run.id).where(col(Run.track_id).in_(ids))),)
    return jobqueue.claim(session, Reproduction, worker_id=worker_id, lease_s=settings.claim_lease_s, where=where)


def machine_fits(track: TrackRow, machine: dict) -> bool:
    """Whether a runner's machine (protocol.reproduce.Machine) has the track's hardware."""
    if track.hardware_kind == "cpu":
        return (track.cpu_threads or 1) <= machine.get("cpu_count", 0)
    gpus = machine.get("gpus") or []
    model = (track.gpu_model or "").lower()
    return len(gpus) >= track.gpu_count and all(model in g.lower() for g in gpus)


def claim_for_runner(session: Session, *, runner_key: str, machine: dict, lease_s: float) -> Reproduction | None:
    ids = _eligible(session, lambda t, _rule: machine_fits(t, machine))
    if not ids:
        return None
    where = (Reproduction.run_pk.in_(select(Run.id).where(col(Run.track_id).in_(ids))),)
    return jobqueue.claim(session, Reproduction, worker_id=runner_key, lease_s=lease_s, where=where)


def job_spec(session: Session, *, job: Reproduction, lease_s: float) -> ReproduceJob:
    """What a reproducer needs to re-run `job`: the track as the server has it, the seed, the submission."""
    run = session.get(Run, job.run_pk)
    track = session.get(TrackRow, run.track_id)
    record = parse_record(run.record, where="the run's record")
    return ReproduceJob(
        job_id=job.id,
        run_id=run.run_id,
        track=track.spec,
        seed=record.seed,
        submission=SubmissionRef(name=record.submission.name, hash=record.submission.hash),
        nproc=max(track.gpu_count, 1) if track.hardware_kind == "cuda" else 1,
        lease_s=lease_s,
    )


def source_of(run: Run, settings: Settings) -> bytes:
    """The run's source.tar as uploaded (checked against the record's hash then); FileNotFoundError if none."""
    path = Path(settings.storage_dir) / "bundles" / run.bundle_sha256 / SOURCE_FILE
    if SOURCE_FILE not in (run.files or {}) or not path.is_file():
        raise FileNotFoundError(f"run {run.run_id}'s bundle has no {SOURCE_FILE}: it cannot be re-run")
    return path.read_bytes()


def queue_position(session: Session, *, job: Reproduction | Verification) -> int | None:
    """1 + the pending, unclaimed jobs of its queue ahead of it; None once it is claimed or done."""
    if job.status != "pending" or job.claimed_by is not None:
        return None
    model = type(job)
    ahead = session.exec(
        select(model.id).where(model.status == "pending", model.claimed_by.is_(None), model.id < job.id)
    ).all()
    return len(ahead) + 1


# ------------------------------------------------------------------ the claim and the verdict


def claim_of(run: Run, verification: Verification, track: TrackRow, settings: Settings) -> comparison.Claim:
    """The run's claim as verified: its step losses (the stored events), the recomputed metric and seconds."""
    record = parse_record(run.record, where="the run's record")
    events = members.parse_events(Path(settings.storage_dir) / "bundles" / run.bundle_sha256 / "events.jsonl")
    saves = [e for e in events if e.event == "checkpoint" and e.sha256]
    env = record.provenance.environment if record.provenance else None
    metric_value = verification.recomputed_val_bpb if track.metric == "val_bpb" else verification.recomputed_core
    return comparison.Claim(
        submission_hash=record.submission.hash,
        losses=[e.loss for e in last_per_step(events)],
        metric=track.metric,
        metric_value=metric_value,
        train_time_s=verification.recomputed_train_time_s or 0.0,
        weights_sha256=saves[-1].sha256 if saves else None,
        hardware_kind=track.hardware_kind,
        cpu_model=env.cpu_model if env else None,
        gpus=[g.name for g in env.gpus] if env else [],
        versions={"torch": env.torch if env else None, "python": env.python if env else None}
        | {p: (env.packages.get(p) if env else None) for p in comparison.PACKAGES_SHOWN},
    )


def describe(machine) -> str:
    gpus = f", {len(machine.gpus)}x{machine.gpus[0]}" if machine.gpus else ""
    return f"{machine.cpu_model or 'CPU'} ({machine.cpu_count} cores){gpus}"


def finish(
    session: Session,
    *,
    job: Reproduction,
    settings: Settings,
    result: ReproduceResult | None,
    error: str | None = None,
    by: str = "",
) -> Reproduction:
    """Write a finished attempt: the verdict of `result` against the claim, or (no result, `error`) a retry."""
    run = session.get(Run, job.run_pk)
    track = session.get(TrackRow, run.track_id)
    verdict = None
    if result is not None:
        try:
            claim = claim_of(run, crud.verification_of(session, run=run), track, settings)
            verdict = comparison.compare(claim, result, rule_of(track))
        except (ValueError, OSError) as e:
            error = f"the claim could not be read back: {e}"
    if verdict is None or verdict.status == "error":
        why = redact(error or "; ".join(verdict.reasons))
        jobqueue.retry_later(job, error=why, max_attempts=settings.max_attempts, retry_after_s=settings.retry_after_s)
        job.progress = None
    else:
        job.status, job.finished_at, job.error, job.progress = verdict.status, utcnow(), None, None
        job.reasons = [redact(r) for r in verdict.reasons]
        job.evidence, job.time_ratio = verdict.evidence, verdict.time_ratio
        job.result = result.model_dump(mode="json")
        job.reproduced_by = f"{by}: {describe(result.machine)}" if by else describe(result.machine)
        job.duration_s = result.wall_s
    session.add(job)
    session.commit()  # the verdict, its evidence and the status together: never half-written
    crud.store_detail(session, run=run)
    ranking.update_standing(session, track=track, submission_id=run.submission_id)
    session.refresh(job)
    log.info("run %s: reproduction %s%s", run.run_id, job.status, f" ({job.error})" if job.error else "")
    return job


# ------------------------------------------------------------------ the verify workers' own re-runs


def reproduce_locally(session: Session, *, job: Reproduction, settings: Settings, worker_id: str) -> Reproduction:
    """Re-run a claimed job in the sandbox on this machine, then compare and record (see finish)."""
    run = session.get(Run, job.run_pk)
    track_row = session.get(TrackRow, run.track_id)
    track: Track = track_from_dict(track_row.spec)
    facts = server_facts(track_row, settings)
    why = local_unavailable(settings)
    if why is None and (facts.data_dir is None or facts.tokenizer_dir is None):
        why = f"the server lacks track {track.name}'s data or tokenizer (set LEADERBOARD_TRACK_RESOURCES)"
    try:
        source = source_of(run, settings)
    except FileNotFoundError as e:
        why = why or str(e)
    if why is not None:
        return finish(session, job=job, settings=settings, result=None, error=why)
    order = WorkOrder(
        job=job_spec(session, job=job, lease_s=settings.claim_lease_s),
        data_dir=str(facts.data_dir),
        tokenizer_dir=str(facts.tokenizer_dir),
    )
    engine = session.get_bind()
    with tempfile.TemporaryDirectory(prefix=f"reproduce-{job.id}-", dir=settings.reproduce_work_dir) as scratch:
        work, out = Path(scratch) / "work", Path(scratch) / "rerun.log"
        work.mkdir()
        prepare_work_dir(work, order, source)

        def tick() -> bool:  # renew the lease and say how far it got; a lost lease cancels the re-run
            note = progress(work, order)
            return jobqueue.renew(engine, Reproduction, job_id=job.id, worker_id=worker_id, progress=note)

        t0 = time.monotonic()
        with open(out, "wb") as f:
            done = sandbox.run(
                rerun_command(work),
                **sandbox_args(order, work),
                limits=sandbox.Limits(
                    wall_s=track.reproduce.wall_s,
                    memory_bytes=settings.reproduce_memory_bytes,
                    disk_bytes=settings.reproduce_disk_bytes,
                ),
                stdout=f,
                stderr=f,
                tick=tick,
                tick_s=max(1.0, settings.claim_lease_s / 3),
            )
        result = collect_result(
            work, order, status=done.status, reason=done.reason, wall_s=done.wall_s, machine=this_machine(), log=out
        )
        log.info("run %s: re-ran in %.0f s (%s)", run.run_id, time.monotonic() - t0, done.status)
    session.refresh(job)
    if done.status == "cancelled" or not jobqueue.holds(job, worker_id=worker_id, lease_s=settings.claim_lease_s):
        return job  # the lease was lost (an admin or another worker took it over): the result is not ours to write
    return finish(session, job=job, settings=settings, result=result, by="the server")
