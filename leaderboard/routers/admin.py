"""/api/admin: tokens and re-verification (admin tokens only: 401 without a token, 403 for a non-admin)."""

from fastapi import APIRouter, HTTPException

from leaderboard import crud, ranking
from leaderboard.deps import CurrentAdmin, CurrentSubmitter, SessionDep
from leaderboard.models import SubmitterPublic, TokenCreate, TokenCreated, TrackRow, VerificationPublic
from leaderboard.tokens import issue_token

router = APIRouter(prefix="/api", tags=["admin"])
AUTH = {401: {"description": "No or unknown token"}, 403: {"description": "Not an admin"}}


@router.get("/me", summary="Who this token belongs to", responses={401: AUTH[401]})
def read_me(submitter: CurrentSubmitter) -> SubmitterPublic:
    return SubmitterPublic.model_validate(submitter)


@router.post("/admin/tokens", status_code=201, summary="Issue an API token (shown once)", responses=AUTH)
def create_token(body: TokenCreate, session: SessionDep, _admin: CurrentAdmin) -> TokenCreated:
    token = issue_token(session, name=body.name, admin=body.admin)
    return TokenCreated(name=body.name, admin=body.admin, token=token)


@router.post(
    "/admin/runs/{run_id}/reverify",
    summary="Queue a run for verification again",
    responses={**AUTH, 404: {"description": "No such run"}},
)
def reverify(run_id: str, session: SessionDep, _admin: CurrentAdmin) -> VerificationPublic:
    run = crud.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(404, detail=f"no run {run_id!r}")
    verification = crud.reset_verification(session, run=run)
    ranking.update_standing(session, track=session.get(TrackRow, run.track_id), submission_id=run.submission_id)
    return VerificationPublic.model_validate(verification, update={"reasons": []})
