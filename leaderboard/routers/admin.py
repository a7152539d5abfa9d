"""/api/me, /api/tokens and /api/admin: who a token is, revoking tokens, issuing them, re-verification,
clearing a review flag and queueing a re-run (admin routes: 401 without a token, 403 for a non-admin)."""

from fastapi import APIRouter, HTTPException, Path, Request

from leaderboard import crud, ranking, reproduction
from leaderboard.deps import CurrentAdmin, CurrentSubmitter, SessionDep, SettingsDep
from leaderboard.models import (
    ReproductionPublic,
    SubmitterPublic,
    TokenCreate,
    TokenCreated,
    TokensRevoked,
    TrackRow,
    VerificationPublic,
)
from leaderboard.tokens import issue_token, revoke, revoke_tokens

router = APIRouter(prefix="/api", tags=["admin"])
AUTH = {401: {"description": "No or unknown token"}, 403: {"description": "Not an admin"}}
Name = Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")


@router.get("/me", summary="Who this token belongs to", responses={401: AUTH[401]})
def read_me(submitter: CurrentSubmitter) -> SubmitterPublic:
    return SubmitterPublic.model_validate(submitter)


@router.delete("/tokens/current", summary="Revoke the token this request carries", responses={401: AUTH[401]})
def revoke_current_token(request: Request, session: SessionDep, submitter: CurrentSubmitter) -> TokensRevoked:
    revoke(session, token_row=request.state.token)
    return TokensRevoked(name=submitter.name, revoked=1)


@router.post("/admin/tokens", status_code=201, summary="Issue an API token (shown once)", responses=AUTH)
def create_token(body: TokenCreate, session: SessionDep, settings: SettingsDep, _admin: CurrentAdmin) -> TokenCreated:
    token, row = issue_token(
        session, name=body.name, admin=body.admin, runner=body.runner, ttl_days=settings.token_ttl_days
    )
    return TokenCreated(name=body.name, admin=body.admin, token=token, expires_at=row.expires_at)


@router.post(
    "/admin/submitters/{name}/revoke",
    summary="Revoke every live token of a submitter",
    responses={**AUTH, 404: {"description": "No such submitter"}},
)
def revoke_submitter(session: SessionDep, _admin: CurrentAdmin, name: str = Name) -> TokensRevoked:
    try:
        return TokensRevoked(name=name, revoked=revoke_tokens(session, name=name))
    except ValueError as e:
        raise HTTPException(404, detail=str(e)) from None


def _run_or_404(session, run_id: str):
    run = crud.get_run(session, run_id=run_id) if len(run_id) <= 200 else None
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id[:200]!r}")
    return run


@router.post(
    "/admin/runs/{run_id}/reverify",
    summary="Queue a run for verification again",
    responses={**AUTH, 404: {"description": "No such run"}},
)
def reverify(run_id: str, session: SessionDep, _admin: CurrentAdmin) -> VerificationPublic:
    run = _run_or_404(session, run_id)
    verification = crud.reset_verification(session, run=run)
    ranking.update_standing(session, track=session.get(TrackRow, run.track_id), submission_id=run.submission_id)
    return VerificationPublic.model_validate(verification, update={"reasons": []})


@router.post(
    "/admin/runs/{run_id}/clear-flag",
    summary="Clear a run's review flag (held-out gap) after looking at it: it may rank",
    responses={**AUTH, 404: {"description": "No such run"}, 409: {"description": "The run is not flagged"}},
)
def clear_flag(run_id: str, session: SessionDep, admin: CurrentAdmin) -> VerificationPublic:
    run = _run_or_404(session, run_id)
    verification = crud.verification_of(session, run=run)
    if not verification.flag or verification.flag_cleared_by:
        raise HTTPException(409, detail=f"run {run_id} has no review flag to clear")
    verification.flag_cleared_by = admin.name
    session.add(verification)
    session.commit()
    crud.store_detail(session, run=run)
    ranking.update_standing(session, track=session.get(TrackRow, run.track_id), submission_id=run.submission_id)
    session.refresh(verification)
    return VerificationPublic.model_validate(verification, update={"reasons": verification.reasons or []})


@router.post(
    "/admin/runs/{run_id}/reproduce",
    summary="Queue a verified run's re-run again (after an error, or to check a dispute), or for the first time",
    responses={**AUTH, 404: {"description": "No such run"}, 409: {"description": "Not verified, or no [reproduce]"}},
)
def queue_reproduction(run_id: str, session: SessionDep, _admin: CurrentAdmin) -> ReproductionPublic:
    run = _run_or_404(session, run_id)
    track = session.get(TrackRow, run.track_id)
    try:
        job = reproduction.requeue(session, run=run, track=track)
    except ValueError as e:
        raise HTTPException(409, detail=str(e)) from None
    return crud.reproduction_public(job)
