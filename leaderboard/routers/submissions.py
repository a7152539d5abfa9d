"""/api/submissions: what has been submitted, by whom, with how many runs."""

from fastapi import APIRouter, HTTPException, Query

from leaderboard import crud
from leaderboard.deps import SessionDep
from leaderboard.models import Submission, SubmissionPublic

router = APIRouter(prefix="/api/submissions", tags=["submissions"])


@router.get("", summary="Submissions, newest first")
def read_submissions(
    session: SessionDep, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9)
) -> list[SubmissionPublic]:
    return crud.list_submissions(session, limit=limit, offset=offset)


@router.get("/{submission_id}", summary="One submission", responses={404: {"description": "No such submission"}})
def read_submission(submission_id: int, session: SessionDep) -> SubmissionPublic:
    submission = session.get(Submission, submission_id) if -(2**31) <= submission_id < 2**31 else None
    if submission is None:
        raise HTTPException(404, detail=f"no submission {submission_id}")
    return crud.submission_public(session, submission=submission)
