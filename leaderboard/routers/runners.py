"""/api/runners: runner machines take reproduction jobs, re-run them in a sandbox, report (harness/runner_machine.py).

    POST /api/runners                                   {"name", "machine"} -> 201 {"runner_id", "name"}
    POST /api/runners/{id}/claim                        -> 200 protocol.reproduce.ReproduceJob | 204 (nothing for it)
    GET  /api/runners/{id}/jobs/{job}/source            -> the run's source.tar
    POST /api/runners/{id}/jobs/{job}/heartbeat         {"progress"} -> renews the lease
    POST /api/runners/{id}/jobs/{job}/result            protocol.reproduce.ReproduceResult -> the verdict

Every route takes a runner token (a submitter marked `is_runner`: `speedrun token create NAME --runner`;
401 without a token, 403 for any other). A runner is its token's (403 for another's). It is handed only
jobs of tracks whose hardware its machine has (leaderboard/reproduction.py). A job's routes answer only
the runner holding its lease: 403 for a job it was never given or that another runner holds now, 409
once its lease expired (the job went back to the queue) or the job ended; a result that does not fit
the schema or names another job is a 422. The server compares the result with the claim itself
(leaderboard/comparison.py): a runner reports, it does not judge.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from leaderboard import crud, jobqueue, reproduction
from leaderboard.deps import CurrentSubmitter, SessionDep, SettingsDep, open_session
from leaderboard.models import (
    Heartbeat,
    Reproduction,
    ReproductionPublic,
    Run,
    Runner,
    RunnerCreate,
    RunnerRegistered,
    Submitter,
    utcnow,
)
from protocol.reproduce import ReproduceJob, parse_result

router = APIRouter(prefix="/api/runners", tags=["runners"])
AUTH = {401: {"description": "No or unknown token"}, 403: {"description": "Not a runner token, or not its runner"}}
HELD = {**AUTH, 404: {"description": "No such job"}, 409: {"description": "The lease expired, or the job ended"}}


def runner_account(submitter: CurrentSubmitter) -> Submitter:
    if not submitter.is_runner:
        raise HTTPException(
            403,
            detail=f"{submitter.name} is not a runner account: an admin makes one: speedrun token create NAME --runner",
        )
    return submitter


RunnerAccount = Annotated[Submitter, Depends(runner_account)]


def runner_of(runner_id: int, session: SessionDep, account: RunnerAccount) -> Runner:
    runner = session.get(Runner, runner_id) if 0 < runner_id < 2**31 else None
    if runner is None:
        raise HTTPException(404, detail=f"no runner {runner_id}: register with POST /api/runners")
    if runner.submitter_id != account.id:
        raise HTTPException(403, detail=f"runner {runner_id} is not this token's")
    return runner


ItsRunner = Annotated[Runner, Depends(runner_of)]


def held_job(session, runner: Runner, job_id: int, lease_s: float) -> Reproduction:
    """The job, if `runner` holds its lease now; 404, 403 or 409 saying why not."""
    job = session.get(Reproduction, job_id) if 0 < job_id < 2**31 else None
    if job is None:
        raise HTTPException(404, detail=f"no reproduction job {job_id}")
    key = f"runner:{runner.id}"
    if job.claimed_by != key:
        raise HTTPException(
            403, detail=f"job {job_id} is not held by runner {runner.id}: a runner reports only the jobs it was given"
        )
    if not jobqueue.holds(job, worker_id=key, lease_s=lease_s):
        raise HTTPException(
            409,
            detail=f"runner {runner.id} no longer holds job {job_id} (its lease of {lease_s:g} s expired, or the job "
            f"is {job.status}): it went back to the queue; claim a new job",
        )
    return job


@router.post("", status_code=201, summary="Register a runner machine and its hardware", responses=AUTH)
def register(body: RunnerCreate, session: SessionDep, account: RunnerAccount) -> RunnerRegistered:
    runner = Runner(submitter_id=account.id, name=body.name, machine=body.machine.model_dump())
    session.add(runner)
    session.commit()
    session.refresh(runner)
    return RunnerRegistered(runner_id=runner.id, name=runner.name)


@router.post(
    "/{runner_id}/claim",
    summary="Take the oldest reproduction job this machine's hardware fits (204: none)",
    response_model=ReproduceJob,
    responses={**AUTH, 204: {"description": "No job for this machine now"}},
)
def claim(session: SessionDep, settings: SettingsDep, runner: ItsRunner):
    runner.last_seen_at = utcnow()
    session.add(runner)
    session.commit()
    job = reproduction.claim_for_runner(
        session, runner_key=f"runner:{runner.id}", machine=runner.machine or {}, lease_s=settings.runner_lease_s
    )
    if job is None:
        return Response(status_code=204)
    crud.store_detail(session, run=session.get(Run, job.run_pk))
    return reproduction.job_spec(session, job=job, lease_s=settings.runner_lease_s)


@router.get(
    "/{runner_id}/jobs/{job_id}/source",
    summary="The source.tar of a held job's run",
    response_class=Response,
    responses=HELD,
)
def source(job_id: int, session: SessionDep, settings: SettingsDep, runner: ItsRunner) -> Response:
    job = held_job(session, runner, job_id, settings.runner_lease_s)
    try:
        data = reproduction.source_of(session.get(Run, job.run_pk), settings)
    except FileNotFoundError as e:
        raise HTTPException(404, detail=str(e)) from None
    return Response(data, media_type="application/x-tar")


@router.post("/{runner_id}/jobs/{job_id}/heartbeat", summary="Renew a held job's lease, say how far", responses=HELD)
def heartbeat(job_id: int, body: Heartbeat, session: SessionDep, settings: SettingsDep, runner: ItsRunner) -> dict:
    held_job(session, runner, job_id, settings.runner_lease_s)
    engine = session.get_bind()
    if not jobqueue.renew(engine, Reproduction, job_id=job_id, worker_id=f"runner:{runner.id}", progress=body.progress):
        raise HTTPException(409, detail=f"runner {runner.id} no longer holds job {job_id}")
    return {"job_id": job_id, "lease_s": settings.runner_lease_s}


@router.post(
    "/{runner_id}/jobs/{job_id}/result",
    summary="Report a held job's re-run; the server compares it with the claim",
    responses={**HELD, 422: {"description": "Not a ReproduceResult, or one of another job"}},
)
async def result(job_id: int, request: Request, settings: SettingsDep, runner: ItsRunner) -> ReproductionPublic:
    try:
        reported = parse_result(await request.json(), where="the result")
    except ValueError as e:  # not JSON, or not the schema
        raise HTTPException(422, detail=str(e).splitlines()[0][:500]) from None
    if reported.job_id != job_id:
        raise HTTPException(422, detail=f"the result is of job {reported.job_id}, posted to job {job_id}")

    def record() -> ReproductionPublic:
        with open_session(request) as session:
            job = held_job(session, runner, job_id, settings.runner_lease_s)
            done = reproduction.finish(session, job=job, settings=settings, result=reported, by=f"runner {runner.name}")
            return crud.reproduction_public(done)

    return await run_in_threadpool(record)
