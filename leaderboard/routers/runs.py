"""/api/runs: upload a run bundle (bearer token), list runs, read one run and download its files.

Upload rules: 401 without a valid token; 413 over the size limits; 422 when the bundle does not
validate (protocol.record's schema, a known track, JSON lines); 201 for a new run; 200 for the same bundle
uploaded again by the same submitter (idempotent: one run); 409 when the run_id exists with another
bundle or belongs to another submitter (a run is never overwritten).
"""

import re
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError

from leaderboard import crud, ranking, uploads
from leaderboard.deps import CurrentSubmitter, SessionDep, SettingsDep
from leaderboard.models import RunDetail, RunPublic, TrackRow
from leaderboard.routers.tracks import track_or_404
from protocol.bundle import MEMBERS

router = APIRouter(prefix="/api/runs", tags=["runs"])
FIELDS = {
    "record": "record.json",
    "events": "events.jsonl",
    "telemetry": "telemetry.jsonl",
    "model": "model.safetensors",
    "meta": "meta.json",
    "log": "train.log",
}
LINK = re.compile(r"^https?://[^\s]{1,2000}$")
MEDIA = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".log": "text/plain; charset=utf-8",
    ".safetensors": "application/octet-stream",
}

Upload = Annotated[UploadFile | None, File()]


@router.post(
    "",
    status_code=201,
    summary="Upload a run bundle",
    responses={
        200: {"description": "This bundle was uploaded before: the existing run", "model": RunPublic},
        401: {"description": "No or unknown token"},
        409: {"description": "The run_id exists with another bundle or another submitter"},
        413: {"description": "Over the size limits"},
        422: {"description": "The bundle does not validate"},
    },
)
def upload_run(
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    submitter: CurrentSubmitter,
    bundle_file: Annotated[UploadFile | None, File(alias="bundle", description=".tar.gz of the members")] = None,
    record: Upload = None,
    events: Upload = None,
    telemetry: Upload = None,
    model: Upload = None,
    meta: Upload = None,
    log: Upload = None,
    description: Annotated[str, Form(max_length=5000)] = "",
    link: Annotated[str, Form(max_length=2000)] = "",
) -> RunPublic:
    """A bundle as one `.tar.gz` (field `bundle`) or as its files (`record`, `events`, `telemetry`, `model`,
    `meta`, optional `log`); `description` and `link` describe the submission."""
    if link and not LINK.match(link):
        raise HTTPException(422, detail="link must be an http(s) URL")
    given = {
        FIELDS[k]: f.file
        for k, f in {
            "record": record,
            "events": events,
            "telemetry": telemetry,
            "model": model,
            "meta": meta,
            "log": log,
        }.items()
        if f is not None
    }
    try:
        staged = uploads.stage(
            storage_dir=settings.storage_dir,
            files=given or None,
            tarball=bundle_file.file if bundle_file is not None else None,
            max_total_bytes=settings.max_upload_bytes,
            max_file_bytes=settings.max_file_bytes,
        )
    except uploads.BundleError as e:
        raise HTTPException(e.status, detail=e.detail) from e
    record = staged.record
    existing = _existing(session, staged, submitter.id)
    if existing is not None:
        response.status_code = 200
        return existing
    track = crud.get_track(session, name=record.track.name)
    if track is None or track.version != record.track.version:
        staged.discard()
        have = f"v{track.version}" if track else "no such track"
        raise HTTPException(422, detail=f"track {record.track.name} v{record.track.version}: the server has {have}")
    uploads.store(staged, storage_dir=settings.storage_dir)
    try:
        submission = crud.get_or_create_submission(
            session,
            submitter=submitter,
            name=record.submission.name,
            code_hash=record.submission.hash,
            description=description,
            link=link,
        )
        run = crud.create_run(
            session,
            record=record,
            bundle_sha256=staged.sha256,
            files=staged.files,
            track=track,
            submission=submission,
            submitter=submitter,
        )
    except IntegrityError:  # the same run_id was inserted concurrently
        session.rollback()
        existing = _existing(session, staged, submitter.id)
        if existing is None:
            raise HTTPException(409, detail=f"run {record.run_id} was just uploaded by someone else") from None
        response.status_code = 200
        return existing
    ranking.update_standing(session, track=track, submission_id=submission.id)
    return crud.run_public(session, run=run)


def _existing(session, staged: uploads.StagedBundle, submitter_id: int) -> RunPublic | None:
    """The run this upload repeats (None if its run_id is new); 409 if the run_id is taken by another bundle."""
    run = crud.get_run(session, run_id=staged.record.run_id)
    if run is None:
        return None
    staged.discard()
    if run.submitter_id != submitter_id:
        raise HTTPException(409, detail=f"run {run.run_id} belongs to another submitter: it is never overwritten")
    if run.bundle_sha256 != staged.sha256:
        raise HTTPException(
            409,
            detail=f"run {run.run_id} was uploaded before with other files (bundle {run.bundle_sha256[:12]}…): "
            "a run is never overwritten; submit a new run instead",
        )
    return crud.run_public(session, run=run)


@router.get("", summary="Runs, newest first")
def read_runs(
    session: SessionDep,
    track: str | None = None,
    submission_id: int | None = Query(None, ge=0, le=2**31 - 1),
    verification: Literal["pending", "verified", "rejected"] | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10**9),
) -> list[RunPublic]:
    track_row: TrackRow | None = track_or_404(session, track) if track is not None else None
    return crud.list_runs(
        session, track=track_row, submission_id=submission_id, verification=verification, limit=limit, offset=offset
    )


def run_or_404(session, run_id: str):
    run = crud.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    return run


@router.get(
    "/{run_id}",
    summary="One run: record, verification and every check",
    responses={404: {"description": "No such run"}},
)
def read_run(run_id: str, session: SessionDep) -> RunDetail:
    return crud.run_detail(session, run=run_or_404(session, run_id))


@router.get(
    "/{run_id}/files/{name}",
    summary="Download one file of a run's bundle",
    response_class=FileResponse,
    responses={404: {"description": "No such run or file"}},
)
def download_file(run_id: str, name: str, session: SessionDep, settings: SettingsDep):
    run = run_or_404(session, run_id)
    if name not in MEMBERS or name not in (run.files or {}):
        raise HTTPException(404, detail=f"run {run_id} has no file {name!r}: it has {', '.join(run.files or {})}")
    path = settings.storage_dir / "bundles" / run.bundle_sha256 / name
    if not path.is_file():
        raise HTTPException(404, detail=f"{name} of run {run_id} is missing from the server's storage")
    suffix = "." + name.rsplit(".", 1)[-1]
    return FileResponse(path, media_type=MEDIA.get(suffix, "application/octet-stream"), filename=f"{run_id}-{name}")
