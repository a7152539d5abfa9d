"""/api/registrations: register a campaign's runs before running them, so every seed counts.

    POST /api/registrations   Authorization: Bearer <token>
    {"track": "cpu-books", "submission": "my_idea", "seeds": [42, 43, 44]}
    -> 201 {"track": "cpu-books", "track_version": 1, "submission": "my_idea", "campaign_id": "reg-…",
            "runs": [{"run_id": "reg-…-s42", "seed": 42, "deadline": "2026-12-04T16:00:00Z"}, …]}

The runner (`speedrun run --server URL --token T`) takes campaign_id as its campaign's name, so each run
is named by its issued run_id (CAMPAIGN-sSEED) on every launcher. An upload of a
registered run_id must match it (the same submitter, track and version, submission name and seed) and
arrive before its deadline (Settings.registration_hours). A registered run that never arrives, or
arrives failed, killed or diverged (its record.json alone may be uploaded, to say so), is a miss; a
submission with misses on a track does not rank there. Seeds must be distinct, and a seed registered
once for a submission cannot be registered again: no seed can be quietly dropped and re-run.
Errors: 401 (token), 404 (no such track), 422 (repeated or taken seeds, malformed body).
"""

from fastapi import APIRouter, HTTPException

from leaderboard import crud, ranking
from leaderboard.deps import CurrentSubmitter, SessionDep, SettingsDep
from leaderboard.models import RegisteredRun, RegistrationCreate, RegistrationCreated
from leaderboard.routers.tracks import track_or_404

router = APIRouter(prefix="/api/registrations", tags=["registrations"])


@router.post(
    "",
    status_code=201,
    summary="Register a campaign's runs (one server-issued run id per seed) before running them",
    responses={
        401: {"description": "No or unknown token"},
        404: {"description": "No such track"},
        422: {"description": "Seeds repeated or registered before"},
    },
)
def register(
    body: RegistrationCreate, session: SessionDep, settings: SettingsDep, submitter: CurrentSubmitter
) -> RegistrationCreated:
    track = track_or_404(session, body.track)
    try:
        rows = crud.register_runs(
            session,
            submitter=submitter,
            track=track,
            submission=body.submission,
            seeds=body.seeds,
            hours=settings.registration_hours,
        )
    except ValueError as e:
        raise HTTPException(422, detail=str(e)) from None
    submission = crud.find_submission(session, submitter=submitter, name=body.submission)
    if submission is not None:  # its standing now counts the new registrations
        ranking.update_standing(session, track=track, submission_id=submission.id)
    return RegistrationCreated(
        track=track.name,
        track_version=track.version,
        submission=body.submission,
        campaign_id=rows[0].run_id.rsplit("-s", 1)[0],
        runs=[RegisteredRun(run_id=r.run_id, seed=r.seed, deadline=r.deadline) for r in rows],
    )
