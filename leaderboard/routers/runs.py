"""/api/runs: upload a run bundle (bearer token), list runs, read one run and download its files.

Upload rules: 401 without a valid token (checked before the body is read); 413 over the size limits or
an expansion ratio; 422 when the bundle does not validate (protocol.record's schema, every member's
strict schema, the track's vocab and sequence length, a registered run's terms); 201 for a new run;
200 for the same bundle uploaded again by the same submitter (idempotent: one run); 409 when the run_id
exists with another bundle or belongs to another submitter (a run is never overwritten), or when the
same weights were uploaded before (one model, one run: the first uploader keeps them).

Files of a run that is not verified are for its owner and admins only (403 for anyone else): a run's
weights and events cannot be taken and re-uploaded as someone else's before the board has checked them.
"""

import re
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import TypeAdapter
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from leaderboard import crud, ranking, reproduction, uploads
from leaderboard.deps import CurrentSubmitter, OptionalSubmitter, SessionDep, SettingsDep, open_session
from leaderboard.models import ReproductionPublic, RunDetail, RunPublic, Submitter, TrackRow
from leaderboard.pagecache import cached_response
from leaderboard.routers.tracks import track_or_404
from protocol.bundle import MEMBERS
from protocol.record import RunRecord
from protocol.source import SOURCE_FILE
from protocol.tracks import Track, track_from_dict

router = APIRouter(prefix="/api/runs", tags=["runs"])
FIELDS = {
    "record": "record.json",
    "events": "events.jsonl",
    "telemetry": "telemetry.jsonl",
    "model": "model.safetensors",
    "meta": "meta.json",
    "log": "train.log",
    "source": SOURCE_FILE,
}
LINK = re.compile(r"^https?://[^\s]{1,2000}$")
MEDIA = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".log": "text/plain; charset=utf-8",
    ".safetensors": "application/octet-stream",
    ".tar": "application/x-tar",
}
MAX_LIMIT = 100
RUNS = TypeAdapter(list[RunPublic])
# The multipart body, for the OpenAPI schema (the route parses the form itself, after the token check).
_FILE = {"type": "string", "format": "binary"}
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "bundle": {**_FILE, "description": ".tar.gz of the members"},
                        **{field: {**_FILE, "description": name} for field, name in FIELDS.items()},
                        "description": {"type": "string", "maxLength": 5000},
                        "link": {"type": "string", "maxLength": 2000},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    summary="Upload a run bundle",
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"description": "This bundle was uploaded before: the existing run", "model": RunPublic},
        401: {"description": "No or unknown token"},
        409: {"description": "The run_id exists with another bundle or another submitter, or the weights exist"},
        413: {"description": "Over the size limits"},
        422: {"description": "The bundle does not validate"},
    },
)
async def upload_run(
    request: Request, response: Response, settings: SettingsDep, submitter: CurrentSubmitter
) -> RunPublic:
    """A bundle as one `.tar.gz` (field `bundle`) or as its files (`record`, `events`, `telemetry`, `model`,
    `meta`, optional `log`, `source`: required on a track that re-runs submissions); `description` and `link`
    describe the submission. A failed, killed or
    diverged run of a registered run id is reported by its `record` alone (a miss)."""
    form = await request.form(max_files=len(FIELDS) + 1, max_fields=2, max_part_size=16 * 1024)
    try:
        description, link = str(form.get("description") or ""), str(form.get("link") or "")
        if len(description) > 5000 or len(link) > 2000:
            raise HTTPException(422, detail="description is at most 5,000 characters and link 2,000")
        if link and not LINK.match(link):
            raise HTTPException(422, detail="link must be an http(s) URL")
        unknown = sorted(set(form) - set(FIELDS) - {"bundle", "description", "link"})
        if unknown:
            raise HTTPException(422, detail=f"unknown form fields {unknown}: send bundle, or {', '.join(FIELDS)}")
        given = {FIELDS[k]: form[k].file for k in FIELDS if isinstance(form.get(k), UploadFile)}
        bundle = form.get("bundle")
        tarball = bundle.file if isinstance(bundle, UploadFile) else None
        return await run_in_threadpool(
            _accept, request, response, settings, submitter, given, tarball, description, link
        )
    finally:
        await form.close()


def _accept(request, response, settings, submitter: Submitter, given, tarball, description: str, link: str):
    with open_session(request) as session:
        tracks = {}

        def track_for(record: RunRecord) -> Track:
            row = crud.get_track(session, name=record.track.name)
            if row is None or row.version != record.track.version:
                have = f"v{row.version}" if row else "no such track"
                raise uploads.BundleError(
                    422, f"track {record.track.name} v{record.track.version}: the server has {have}"
                )
            tracks["row"] = row
            return track_from_dict(row.spec)

        try:
            staged = uploads.stage(
                storage_dir=settings.storage_dir,
                track_for=track_for,
                files=given or None,
                tarball=tarball,
                max_total_bytes=settings.max_upload_bytes,
                max_file_bytes=settings.max_file_bytes,
                max_expansion=settings.max_expansion_ratio,
            )
        except uploads.BundleError as e:
            raise HTTPException(e.status, detail=e.detail) from None
        try:
            return _insert(session, response, settings, submitter, staged, tracks["row"], description, link)
        finally:
            staged.discard()  # stored bundles were moved away; anything left is not wanted


def _insert(session, response, settings, submitter, staged: uploads.StagedBundle, track: TrackRow, description, link):
    record = staged.record
    existing = _existing(session, staged, submitter.id)
    if existing is not None:
        response.status_code = 200
        return existing
    registration = crud.get_registration(session, run_id=record.run_id)
    try:
        crud.check_registration(registration, record=record, submitter=submitter, track=track)
    except ValueError as e:
        raise HTTPException(422, detail=str(e)) from None
    if staged.weights_sha256:
        first = crud.run_with_weights(session, weights_sha256=staged.weights_sha256)
        if first is not None:
            raise HTTPException(409, detail=crud.same_weights_reason(session, first))
    for attempt in (1, 2):
        try:
            submission = crud.get_or_create_submission(
                session,
                submitter=submitter,
                name=record.submission.name,
                code_hash=record.submission.hash,
                description=description,
                link=link,
                division=record.submission.division,
            )
            if submission.division != record.submission.division:  # one code hash, one division
                raise HTTPException(
                    422,
                    detail=f"submission {submission.name} with this code hash is in the {submission.division} division "
                    f"on this server, the record says {record.submission.division}: send the runner's record",
                )
            run = crud.create_run(
                session,
                record=record,
                bundle_sha256=staged.sha256,
                weights_sha256=staged.weights_sha256,
                files=staged.files,
                summary=staged.summary,
                track=track,
                submission=submission,
                submitter=submitter,
                missed=staged.is_miss,
            )
            uploads.store(staged, storage_dir=settings.storage_dir)  # files move only once the row is in
            session.commit()
            break
        except IntegrityError:  # a concurrent upload inserted the same run, weights or a new submission first
            session.rollback()
            crud.remove_unreferenced_bundle(session, settings.storage_dir, staged.sha256)
            existing = _existing(session, staged, submitter.id)
            if existing is not None:
                response.status_code = 200
                return existing
            first = crud.run_with_weights(session, weights_sha256=staged.weights_sha256 or "")
            if first is not None:
                raise HTTPException(409, detail=crud.same_weights_reason(session, first)) from None
            if attempt == 2:
                raise HTTPException(409, detail=f"run {record.run_id} conflicts with a concurrent upload") from None
        except BaseException:
            session.rollback()
            crud.remove_unreferenced_bundle(session, settings.storage_dir, staged.sha256)
            raise
    session.refresh(run)
    crud.store_detail(session, run=run)
    ranking.update_standing(session, track=track, submission_id=submission.id)
    return crud.run_public(session, run=run)


def _existing(session, staged: uploads.StagedBundle, submitter_id: int) -> RunPublic | None:
    """The run this upload repeats (None if its run_id is new); 409 if the run_id is taken by another bundle."""
    run = crud.get_run(session, run_id=staged.record.run_id)
    if run is None:
        return None
    if run.submitter_id != submitter_id:
        raise HTTPException(409, detail=f"run {run.run_id} belongs to another submitter: it is never overwritten")
    if run.bundle_sha256 != staged.sha256:
        raise HTTPException(
            409,
            detail=f"run {run.run_id} was uploaded before with other files (bundle {run.bundle_sha256[:12]}…): "
            "a run is never overwritten; submit a new run instead",
        )
    return crud.run_public(session, run=run)


@router.get(
    "",
    summary="Runs, newest first (keyset pages: pass the X-Next-Cursor header back as `cursor`)",
    response_model=list[RunPublic],
    responses={404: {"description": "No such track"}},
)
async def read_runs(
    request: Request,
    settings: SettingsDep,
    track: str | None = Query(None, max_length=100),
    submission_id: int | None = Query(None, ge=0, le=2**31 - 1),
    verification: Literal["pending", "verified", "rejected", "error", "missed"] | None = None,
    limit: int = Query(50, ge=1, le=MAX_LIMIT),
    cursor: Annotated[str | None, Query(max_length=18, pattern=r"^[0-9]+$")] = None,
) -> Response:
    def build():
        with open_session(request) as session:
            track_row: TrackRow | None = track_or_404(session, track) if track is not None else None
            runs, next_cursor = crud.list_runs(
                session,
                track=track_row,
                submission_id=submission_id,
                verification=verification,
                limit=limit,
                before_id=int(cursor) if cursor else None,
            )
        return RUNS.dump_json(runs), ({"X-Next-Cursor": str(next_cursor)} if next_cursor is not None else {})

    return await cached_response(request, settings.cache_ttl_s, build, "application/json")


def run_or_404(session, run_id: str):
    run = crud.get_run(session, run_id=run_id) if len(run_id) <= 200 else None
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id[:200]!r}")
    return run


@router.get(
    "/{run_id}",
    summary="One run: record, verification and every check",
    response_model=RunDetail,
    responses={404: {"description": "No such run"}},
)
async def read_run(run_id: str, request: Request, settings: SettingsDep) -> Response:
    def build() -> str:
        with open_session(request) as session:  # stored by each write to the run: one indexed read
            detail = crud.detail_json(session, run_id=run_id) if len(run_id) <= 200 else None
        if detail is None:
            raise HTTPException(404, detail=f"no run {run_id[:200]!r}")
        return detail

    return await cached_response(request, settings.cache_ttl_s, build, "application/json")


@router.get(
    "/{run_id}/reproduction",
    summary="A run's re-run: status, queue position, progress, and the verdict with its evidence",
    response_model=ReproductionPublic,
    responses={404: {"description": "No such run, or it was not chosen for a re-run"}},
)
async def read_reproduction(run_id: str, request: Request, settings: SettingsDep) -> Response:
    def build() -> bytes:
        with open_session(request) as session:
            run = run_or_404(session, run_id)
            job = crud.reproduction_of(session, run=run)
            if job is None:
                raise HTTPException(404, detail=f"run {run_id} was not chosen for a re-run")
            live = crud.reproduction_public(job, reproduction.queue_position(session, job=job))
        return live.model_dump_json().encode()

    return await cached_response(request, settings.cache_ttl_s, build, "application/json")


@router.get(
    "/{run_id}/files/{name}",
    summary="Download one file of a run's bundle (before it is verified: its owner and admins only)",
    response_class=FileResponse,
    responses={403: {"description": "Not verified yet, and not yours"}, 404: {"description": "No such run or file"}},
)
def download_file(run_id: str, name: str, session: SessionDep, settings: SettingsDep, who: OptionalSubmitter):
    run = run_or_404(session, run_id)
    if name not in MEMBERS or name not in (run.files or {}):
        raise HTTPException(404, detail=f"run {run_id} has no file {name[:100]!r}: it has {', '.join(run.files or {})}")
    status = crud.verification_of(session, run=run).status
    if status != "verified" and not (who is not None and (who.is_admin or who.id == run.submitter_id)):
        raise HTTPException(
            403,
            detail=f"run {run_id} is {status}, not verified: until it is, its files are for its owner and admins "
            "(send the owner's token)",
        )
    path = settings.storage_dir / "bundles" / run.bundle_sha256 / name
    if not path.is_file():
        raise HTTPException(404, detail=f"{name} of run {run_id} is missing from the server's storage")
    suffix = "." + name.rsplit(".", 1)[-1]
    return FileResponse(path, media_type=MEDIA.get(suffix, "application/octet-stream"), filename=f"{run_id}-{name}")
