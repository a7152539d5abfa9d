"""Reads and writes the routers and the verifier share; keyword-only, no HTTP here (errors are ValueErrors).

Tracks are synced from protocol/tracks/*.toml (plus Settings.track_files) at start-up; a run is created
from a stored bundle together with its pending Verification; the public shapes are built here so a
router is a few lines.
"""

from pathlib import Path

from sqlalchemy import func
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from leaderboard.models import (
    Check,
    CheckPublic,
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
)
from protocol.record import RunRecord
from protocol.tracks import Hardware, Track, list_tracks, load_track

# ------------------------------------------------------------------ tracks


def track_specs(extra_files: list[Path] = ()) -> list[Track]:
    specs = {t.name: t for t in list_tracks()}
    for path in extra_files:
        t = load_track(path)
        specs[t.name] = t
    return list(specs.values())


def sync_tracks(session: Session, *, specs: list[Track]) -> list[TrackRow]:
    """Insert or update one TrackRow row per spec (name is the key; a new version replaces the old fields)."""
    rows = []
    for spec in specs:
        row = session.exec(select(TrackRow).where(TrackRow.name == spec.name)).first() or TrackRow(name=spec.name)
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
        rows.append(row)
    session.commit()
    return rows


def get_track(session: Session, *, name: str) -> TrackRow | None:
    return session.exec(select(TrackRow).where(TrackRow.name == name)).first()


def list_tracks_public(session: Session) -> list[TrackPublic]:
    return [track_public(t) for t in session.exec(select(TrackRow).order_by(TrackRow.name)).all()]


def track_public(track: TrackRow) -> TrackPublic:
    hardware = Hardware(track.hardware_kind, track.gpu_count, track.gpu_model, track.cpu_threads).describe()
    return TrackPublic.model_validate(track, update={"hardware": hardware})


# ------------------------------------------------------------------ submissions and runs


def get_or_create_submission(
    session: Session, *, submitter: Submitter, name: str, code_hash: str | None, description: str, link: str
) -> Submission:
    code_hash = code_hash or ""
    sub = session.exec(
        select(Submission).where(
            Submission.submitter_id == submitter.id, Submission.name == name, Submission.code_hash == code_hash
        )
    ).first()
    if sub is None:
        sub = Submission(submitter_id=submitter.id, name=name, code_hash=code_hash, description=description, link=link)
    elif description or link:  # a later upload may fill in or correct them
        sub.description, sub.link = description or sub.description, link or sub.link
    session.add(sub)
    session.flush()
    return sub


def get_run(session: Session, *, run_id: str) -> Run | None:
    return session.exec(select(Run).where(Run.run_id == run_id)).first()


def hardware_of(record: RunRecord) -> str | None:
    env = record.provenance.environment if record.provenance else None
    if env is None:
        return None
    if env.gpus:
        return f"{len(env.gpus)}x{env.gpus[0].name}"
    return f"CPU ({env.cpu_model or '?'}), {env.cpu_count_available or '?'} threads"


def create_run(
    session: Session,
    *,
    record: RunRecord,
    bundle_sha256: str,
    files: dict,
    track: TrackRow,
    submission: Submission,
    submitter: Submitter,
) -> Run:
    """The Run row for a stored bundle, and its pending Verification, in one transaction."""
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
        hardware=hardware_of(record),
        files=files,
        record=record.model_dump(mode="json"),
    )
    session.add(run)
    session.flush()
    session.add(Verification(run_pk=run.id))
    session.commit()
    session.refresh(run)
    return run


def verification_of(session: Session, *, run: Run) -> Verification:
    return session.exec(select(Verification).where(Verification.run_pk == run.id)).one()


def _names(session: Session, run: Run) -> tuple[str, str, str]:
    track = session.get(TrackRow, run.track_id)
    submission = session.get(Submission, run.submission_id)
    submitter = session.get(Submitter, run.submitter_id)
    return track.name, submission.name, submitter.name


def run_public(session: Session, *, run: Run, verification: Verification | None = None) -> RunPublic:
    track, submission, submitter = _names(session, run)
    status = (verification or verification_of(session, run=run)).status
    return RunPublic.model_validate(
        run,
        update={"track": track, "submission": submission, "submitter": submitter, "verification": status},
    )


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
    )


def list_runs(
    session: Session,
    *,
    track: TrackRow | None = None,
    submission_id: int | None = None,
    verification: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[RunPublic]:
    query = (
        select(Run, Verification.status, TrackRow.name, Submission.name, Submitter.name)
        .join(Verification, Verification.run_pk == Run.id)
        .join(TrackRow, TrackRow.id == Run.track_id)
        .join(Submission, Submission.id == Run.submission_id)
        .join(Submitter, Submitter.id == Run.submitter_id)
        .options(defer(Run.record), defer(Run.files))  # the raw record is only for a run's own page
    )
    if track is not None:
        query = query.where(Run.track_id == track.id)
    if submission_id is not None:
        query = query.where(Run.submission_id == submission_id)
    if verification is not None:
        query = query.where(Verification.status == verification)
    rows = session.exec(query.order_by(col(Run.uploaded_at).desc(), col(Run.id).desc()).offset(offset).limit(limit))
    return [
        RunPublic.model_validate(
            run, update={"verification": status, "track": tname, "submission": sname, "submitter": who}
        )
        for run, status, tname, sname, who in rows
    ]


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
        }
    )
    session.add(verification)
    session.commit()
    session.refresh(verification)
    return verification
