"""Reads and writes the routers and the verifier share; keyword-only, no HTTP here (errors are ValueErrors).

Tracks are synced from protocol/tracks/*.toml (plus Settings.track_files) at start-up; a run is created
from a stored bundle together with its pending Verification; the public shapes are built here so a
router is a few lines.
"""

import shutil
import uuid
from datetime import timedelta
from pathlib import Path

from pydantic import TypeAdapter
from sqlalchemy import func
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from leaderboard.models import (
    Check,
    CheckPublic,
    Registration,
    Reproduction,
    ReproductionPublic,
    Run,
    RunDetail,
    RunPublic,
    Submission,
    SubmissionPublic,
    Submitter,
    TrackPublic,
    TrackRow,
    Verification,
    VerificationPublic,
    utcnow,
)
from protocol.record import RunRecord
from protocol.tracks import Hardware, Track, list_tracks, load_track

RUN_DETAIL = TypeAdapter(RunDetail)

# ------------------------------------------------------------------ tracks


def track_specs(extra_files: list[Path] = ()) -> list[Track]:
    specs = {t.name: t for t in list_tracks()}
    for path in extra_files:
        t = load_track(path)
        specs[t.name] = t
    return list(specs.values())


def sync_tracks(session: Session, *, specs: list[Track]) -> list[TrackRow]:
    """Insert or update one TrackRow row per spec (name is the key; a new version replaces the old fields);
    returns the rows whose version changed (their runs of the old version are now superseded)."""
    changed = []
    for spec in specs:
        row = session.exec(select(TrackRow).where(TrackRow.name == spec.name)).first() or TrackRow(name=spec.name)
        if row.id is not None and row.version != spec.version:
            changed.append(row)
        hw, target = spec.hardware, spec.target
        row.sqlmodel_update(
            {
                "version": spec.version,
                "description": spec.description,
                "provisional": spec.provisional,
                "metric": target.metric,
                "threshold": target.threshold,
                "higher_is_better": target.higher_is_better,
                "hardware_kind": hw.kind,
                "gpu_model": hw.gpu_model,
                "gpu_count": hw.gpu_count,
                "cpu_threads": hw.cpu_threads,
                "price_per_hour": spec.price_per_hour,
                "data_hash": spec.dataset.content_hash,
                "spec": spec.to_dict(),
            }
        )
        session.add(row)
    session.commit()
    return changed


def get_track(session: Session, *, name: str) -> TrackRow | None:
    return session.exec(select(TrackRow).where(TrackRow.name == name)).first()


def list_tracks_public(session: Session) -> list[TrackPublic]:
    return [track_public(t) for t in session.exec(select(TrackRow).order_by(TrackRow.name)).all()]


def track_public(track: TrackRow) -> TrackPublic:
    hardware = Hardware(track.hardware_kind, track.gpu_count, track.gpu_model, track.cpu_threads).describe()
    return TrackPublic.model_validate(track, update={"hardware": hardware})


# ------------------------------------------------------------------ submissions and runs


def get_or_create_submission(
    session: Session,
    *,
    submitter: Submitter,
    name: str,
    code_hash: str | None,
    description: str,
    link: str,
    division: str = "closed",
) -> Submission:
    code_hash = code_hash or ""
    sub = session.exec(
        select(Submission).where(
            Submission.submitter_id == submitter.id, Submission.name == name, Submission.code_hash == code_hash
        )
    ).first()
    if sub is None:
        sub = Submission(
            submitter_id=submitter.id, name=name, code_hash=code_hash, description=description, link=link,
            division=division,
        )  # fmt: skip
    elif description or link:  # a later upload may fill in or correct them
        sub.description, sub.link = description or sub.description, link or sub.link
    session.add(sub)
    session.flush()
    return sub


def find_submission(session: Session, *, submitter: Submitter, name: str) -> Submission | None:
    """The submitter's newest submission of that name (any code hash)."""
    return session.exec(
        select(Submission)
        .where(Submission.submitter_id == submitter.id, Submission.name == name)
        .order_by(col(Submission.id).desc())
    ).first()


def get_run(session: Session, *, run_id: str) -> Run | None:
    return session.exec(select(Run).where(Run.run_id == run_id)).first()


def run_with_weights(session: Session, *, weights_sha256: str) -> Run | None:
    return session.exec(select(Run).where(Run.weights_sha256 == weights_sha256)).first()


def same_weights_reason(session: Session, first: Run) -> str:
    who = session.get(Submitter, first.submitter_id)
    return (
        f"these weights were uploaded first as run {first.run_id} by {who.name} on "
        f"{first.uploaded_at:%Y-%m-%d %H:%M} UTC: one model, one run (train your own to submit it)"
    )


def remove_unreferenced_bundle(session: Session, storage_dir: Path, bundle_sha256: str) -> None:
    """Remove bundles/<sha256> when no run points to it (an insert that failed after the files moved)."""
    if session.exec(select(Run.id).where(Run.bundle_sha256 == bundle_sha256)).first() is None:
        shutil.rmtree(Path(storage_dir) / "bundles" / bundle_sha256, ignore_errors=True)


def hardware_of(record: RunRecord, track: TrackRow) -> str | None:
    """What a run ran on, as the board shows it: the track's hardware when the record shows that hardware, else
    what the record shows, marked (an 8xH100 claim on a CPU track is shown as the CPU run it was, and says so)."""
    env = record.provenance.environment if record.provenance else None
    if env is None:
        return None
    gpus = [g.name for g in env.gpus]
    if track.hardware_kind == "cpu":
        cpu = f"CPU ({(env.cpu_model or '?')[:80]}), {env.cpu_count_available or '?'} threads"
        return cpu + (f" (the record also lists {len(gpus)} GPUs, unused on a CPU track)" if gpus else "")
    model = (track.gpu_model or "").lower()
    if len(gpus) == track.gpu_count and all(model in g.lower() for g in gpus):
        return f"{len(gpus)}x{gpus[0][:80]}"
    shown = f"{len(gpus)}x{gpus[0][:80]}" if gpus else "no GPU"
    return f"{shown} (not the track's {track.gpu_count}x{track.gpu_model})"


# ------------------------------------------------------------------ registrations


def get_registration(session: Session, *, run_id: str) -> Registration | None:
    return session.exec(select(Registration).where(Registration.run_id == run_id)).first()


def check_registration(
    registration: Registration | None, *, record: RunRecord, submitter: Submitter, track: TrackRow
) -> None:
    """A registered run id must arrive as registered, before its deadline; a miss is reported only for one."""
    if registration is None:
        if record.status != "completed":
            raise ValueError(
                f"record.json has status {record.status}: only a completed run can be verified (a failed run is "
                "uploaded only to report a registered run as a miss)"
            )
        return
    expected = {
        "submitter": (submitter.id, registration.submitter_id),
        "track": (track.id, registration.track_id),
        "track version": (record.track.version, registration.track_version),
        "submission": (record.submission.name, registration.submission_name),
        "seed": (record.seed, registration.seed),
    }
    wrong = [k for k, (got, want) in expected.items() if got != want]
    if wrong:
        raise ValueError(
            f"run {record.run_id} was registered with another {', '.join(wrong)}: upload the run made for it "
            f"(seed {registration.seed}, submission {registration.submission_name})"
        )
    deadline = registration.deadline
    if deadline.tzinfo is None:  # SQLite returns naive datetimes; they were written as UTC
        deadline = deadline.replace(tzinfo=utcnow().tzinfo)
    if utcnow() > deadline:
        raise ValueError(
            f"run {record.run_id} arrived after its deadline {deadline:%Y-%m-%d %H:%M} UTC: it counts as a miss"
        )


def register_runs(
    session: Session, *, submitter: Submitter, track: TrackRow, submission: str, seeds: list[int], hours: float
) -> list[Registration]:
    """One Registration per seed, with a server-issued run id; ValueError if a seed is repeated or taken."""
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct: every seed is one run, and each counts once")
    taken = session.exec(
        select(Registration.seed).where(
            Registration.submitter_id == submitter.id,
            Registration.track_id == track.id,
            Registration.submission_name == submission,
            col(Registration.seed).in_(seeds),
        )
    ).all()
    if taken:
        raise ValueError(f"seeds {sorted(taken)} are registered for {submission} already: each seed counts once")
    # One name per registration, each seed's run id under it: the runner's campaign id (its runs are CAMPAIGN-sSEED).
    now, rows, campaign = utcnow(), [], f"reg-{uuid.uuid4().hex[:20]}"
    for seed in seeds:
        row = Registration(
            run_id=f"{campaign}-s{seed}",
            submitter_id=submitter.id,
            track_id=track.id,
            track_version=track.version,
            submission_name=submission,
            seed=seed,
            created_at=now,
            deadline=now + timedelta(hours=hours),
        )
        session.add(row)
        rows.append(row)
    session.commit()
    for row in rows:
        session.refresh(row)
    return rows


def create_run(
    session: Session,
    *,
    record: RunRecord,
    bundle_sha256: str,
    weights_sha256: str | None,
    files: dict,
    summary: dict | None,
    track: TrackRow,
    submission: Submission,
    submitter: Submitter,
    missed: bool = False,
) -> Run:
    """The Run row for a staged bundle and its Verification (pending; "missed" for a miss report), flushed
    and not committed: the caller moves the files into place, then commits."""
    timing, result, telemetry, throughput = record.timing, record.result, record.telemetry, record.throughput
    run = Run(
        run_id=record.run_id,
        bundle_sha256=bundle_sha256,
        track_id=track.id,
        submission_id=submission.id,
        submitter_id=submitter.id,
        seed=record.seed,
        status=record.status,
        official=record.official,
        created=record.created,
        finished=record.finished,
        train_time_s=timing and timing.train_time_s,
        steps=timing and timing.steps,
        metric=result.metric if result else track.metric,
        metric_value=result and result.value,
        val_bpb=result and result.val_bpb,
        core=result and result.core,
        target_met=result and result.target_met,
        tokens_per_s=throughput and throughput.tokens_per_s,
        mfu=throughput and throughput.mfu,
        energy_kwh=telemetry and telemetry.energy_kwh,
        cost_usd=telemetry and telemetry.cost,
        hardware=hardware_of(record, track),
        track_version=record.track.version,
        weights_sha256=weights_sha256,
        files=files,
        summary=summary,
        record=record.model_dump(mode="json"),
    )
    session.add(run)
    session.flush()
    if missed:
        why = f"a registered run reported {record.status}: a miss"
        session.add(Verification(run_pk=run.id, status="missed", reasons=[why], finished_at=utcnow()))
    else:
        session.add(Verification(run_pk=run.id))
    session.flush()
    return run


def verification_of(session: Session, *, run: Run) -> Verification:
    return session.exec(select(Verification).where(Verification.run_pk == run.id)).one()


def reproduction_of(session: Session, *, run: Run) -> Reproduction | None:
    return session.exec(select(Reproduction).where(Reproduction.run_pk == run.id)).first()


def reproduction_public(job: Reproduction | None, queue_position: int | None = None) -> ReproductionPublic | None:
    if job is None:
        return None
    return ReproductionPublic.model_validate(
        job, update={"reasons": job.reasons or [], "queue_position": queue_position}
    )


def run_public(session: Session, *, run: Run, verification: Verification | None = None) -> RunPublic:
    track = session.get(TrackRow, run.track_id)
    submission = session.get(Submission, run.submission_id)
    submitter = session.get(Submitter, run.submitter_id)
    status = (verification or verification_of(session, run=run)).status
    reproduction = reproduction_of(session, run=run)
    return RunPublic.model_validate(
        run,
        update={
            "track": track.name,
            "submission": submission.name,
            "submitter": submitter.name,
            "verification": status,
            "superseded": is_superseded(run.track_version, track.version),
            "reproduction": reproduction.status if reproduction else None,
        },
    )


def detail_json(session: Session, *, run_id: str) -> str | None:
    """A run's stored API answer (Run.detail), built now when it was never stored; None for no such run."""
    stored = session.exec(select(Run.detail).where(Run.run_id == run_id)).first()
    if stored is not None:
        return stored
    run = get_run(session, run_id=run_id)
    return None if run is None else RUN_DETAIL.dump_json(run_detail(session, run=run)).decode()


def store_detail(session: Session, *, run: Run) -> None:
    """Rebuild and store a run's API answer: called by every write that changes what it says."""
    run.detail = RUN_DETAIL.dump_json(run_detail(session, run=run)).decode()
    session.add(run)
    session.commit()


def is_superseded(run_version: int | None, track_version: int) -> bool:
    return run_version is not None and run_version != track_version


def run_detail(session: Session, *, run: Run) -> RunDetail:
    verification = verification_of(session, run=run)
    checks = session.exec(select(Check).where(Check.verification_id == verification.id).order_by(Check.id)).all()
    public = run_public(session, run=run, verification=verification)
    return RunDetail(
        **public.model_dump(),
        bundle_sha256=run.bundle_sha256,
        files=run.files or {},
        record=run.record or {},
        verification_detail=VerificationPublic.model_validate(
            verification, update={"reasons": verification.reasons or []}
        ),
        checks=[CheckPublic.model_validate(c) for c in checks],
        reproduction_detail=reproduction_public(reproduction_of(session, run=run)),
    )


def list_runs(
    session: Session,
    *,
    track: TrackRow | None = None,
    submission_id: int | None = None,
    verification: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> tuple[list[RunPublic], int | None]:
    """A page of runs, newest first, and the cursor of the next page (None at the end): keyset on the run's
    primary key, so page 1000 costs what page 1 does."""
    query = (
        select(
            Run,
            Verification.status,
            TrackRow.name,
            TrackRow.version,
            Submission.name,
            Submitter.name,
            Reproduction.status,
        )
        .join(Verification, Verification.run_pk == Run.id)
        .join(Reproduction, Reproduction.run_pk == Run.id, isouter=True)
        .join(TrackRow, TrackRow.id == Run.track_id)
        .join(Submission, Submission.id == Run.submission_id)
        .join(Submitter, Submitter.id == Run.submitter_id)
        .options(defer(Run.record), defer(Run.files), defer(Run.summary), defer(Run.detail))  # a run's page reads them
    )
    if track is not None:
        query = query.where(Run.track_id == track.id)
    if submission_id is not None:
        query = query.where(Run.submission_id == submission_id)
    if verification is not None:
        query = query.where(Verification.status == verification)
    if before_id is not None:
        query = query.where(Run.id < before_id)
    rows = session.exec(query.order_by(col(Run.id).desc()).limit(limit + 1)).all()
    page = [
        RunPublic.model_validate(
            run,
            update={
                "verification": status,
                "track": tname,
                "submission": sname,
                "submitter": who,
                "superseded": is_superseded(run.track_version, version),
                "reproduction": reproduced,
            },
        )
        for run, status, tname, version, sname, who, reproduced in rows[:limit]
    ]
    return page, (rows[limit - 1][0].id if len(rows) > limit else None)


def submission_public(session: Session, *, submission: Submission) -> SubmissionPublic:
    submitter = session.get(Submitter, submission.submitter_id)
    n_runs = session.exec(select(func.count()).select_from(Run).where(Run.submission_id == submission.id)).one()
    return SubmissionPublic.model_validate(submission, update={"submitter": submitter.name, "n_runs": n_runs})


def list_submissions(session: Session, *, limit: int = 100, offset: int = 0) -> list[SubmissionPublic]:
    counts = (
        select(Run.submission_id, func.count().label("n")).group_by(Run.submission_id).subquery()  # one pass over runs
    )
    rows = session.exec(
        select(Submission, Submitter.name, counts.c.n)
        .join(Submitter, Submitter.id == Submission.submitter_id)
        .join(counts, counts.c.submission_id == Submission.id, isouter=True)
        .order_by(col(Submission.created_at).desc(), col(Submission.id).desc())
        .offset(offset)
        .limit(limit)
    )
    return [SubmissionPublic.model_validate(sub, update={"submitter": who, "n_runs": n or 0}) for sub, who, n in rows]


def reset_verification(session: Session, *, run: Run) -> Verification:
    """Queue a run for verification again (admin): its checks are cleared, its status is pending."""
    verification = verification_of(session, run=run)
    for check in session.exec(select(Check).where(Check.verification_id == verification.id)).all():
        session.delete(check)
    verification.sqlmodel_update(
        {
            "status": "pending",
            "attempts": 0,
            "claimed_by": None,
            "claimed_at": None,
            "not_before": None,
            "finished_at": None,
            "reasons": [],
            "error": None,
            "flag": None,
            "flag_cleared_by": None,
        }
    )
    session.add(verification)
    session.commit()
    session.refresh(verification)
    store_detail(session, run=run)
    return verification
