"""The FastAPI application and `serve()`: migrate the database, sync the tracks, serve API and pages.

    speedrun serve --host 127.0.0.1 --port 8000      # leaderboard.app.serve(host, port)
    python -m leaderboard.app                         # the same on the defaults

OpenAPI: /docs (Swagger UI needs its assets from a CDN; /openapi.json is always there), /redoc.
"""

import gc
import logging
import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlmodel import Session, select
from starlette.exceptions import HTTPException

from leaderboard import uploads
from leaderboard.db import is_sqlite, prepare_database
from leaderboard.limits import BodyLimit, RateLimit, body_limits
from leaderboard.models import Run
from leaderboard.pagecache import ServeCached
from leaderboard.routers import admin, chat, pages, registrations, runners, runs, submissions, tracks
from leaderboard.settings import Settings, database_url, get_settings

log = logging.getLogger("leaderboard.app")


def sweep_storage(engine, settings: Settings) -> list[str]:
    """Staging dirs a killed upload left, and bundles no run points to, older than Settings.sweep_after_s."""
    with Session(engine) as session:
        referenced = set(session.exec(select(Run.bundle_sha256)).all())
    removed = uploads.sweep(settings.storage_dir, keep=referenced.__contains__, older_than_s=settings.sweep_after_s)
    if removed:
        log.info("swept %d leftovers from storage: %s", len(removed), ", ".join(removed[:5]))
    return removed


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each problem's place and reason, without echoing the input (a NaN there cannot be JSON)."""
    detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
    return JSONResponse({"detail": detail}, status_code=422)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="speedrun leaderboard",
        summary="Verified, ranked results of the nanochat time-to-GPT-2 speedrun",
        description=(
            "Upload a run bundle with `speedrun submit RUN_DIR --server URL --token T`. A worker recomputes "
            "what it can (val bpb / CORE with the frozen eval, timed seconds from the step events) and "
            "cross-checks the rest (hashes, hardware); only verified runs rank."
        ),
        version="1",
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, pages.http_error)  # a browser gets a page's error as a page
    app.state.settings = settings
    app.state.engine = prepare_database(settings)
    sweep_storage(app.state.engine, settings)
    for module in (tracks, runs, registrations, submissions, admin, runners):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.include_router(chat.router)
    app.add_middleware(ServeCached)  # a fresh cached read is answered before routing
    app.add_middleware(BodyLimit, limits=body_limits(settings))
    app.add_middleware(RateLimit, settings=settings)  # outermost: a limited client costs nothing more

    @app.get("/healthz", tags=["meta"], summary="Liveness")
    def healthz() -> dict:
        return {"ok": True}

    # What start-up made (torch, the tables, the routes: ~1M objects) lives as long as the process: frozen out
    # of the garbage collector, a full collection under load scans what requests make, not all of it again.
    gc.collect()
    gc.freeze()
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, *, workers: int | None = None) -> None:
    """`speedrun serve`: run the leaderboard under uvicorn (blocks). Workers: one process per core with
    PostgreSQL, one with SQLite (its single writer would only make more processes wait on each other)."""
    settings = get_settings()
    url = database_url(settings)
    prepare_database(settings)  # once, before the workers start: they only read the schema
    if workers is None:
        workers = 1 if is_sqlite(url) else max(1, len(os.sched_getaffinity(0)))
    print(f"leaderboard on http://{host}:{port} ({workers} workers, database {url.split('@')[-1]})")
    uvicorn.run("leaderboard.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


if __name__ == "__main__":
    serve()
