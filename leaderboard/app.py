"""The FastAPI application and `serve()`: migrate the database, sync the tracks, serve API and pages.

    speedrun serve --host 127.0.0.1 --port 8000      # leaderboard.app.serve(host, port)
    python -m leaderboard.app                         # the same on the defaults

OpenAPI: /docs (Swagger UI needs its assets from a CDN; /openapi.json is always there), /redoc.
"""

import json

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from leaderboard.db import prepare_database
from leaderboard.routers import admin, chat, pages, runs, submissions, tracks
from leaderboard.settings import Settings, database_url, get_settings

UPLOAD_PATH = "/api/runs"


class BodyLimit:
    """413 for an upload over Settings.max_upload_bytes: at once from Content-Length, else while it streams.

    FastAPI turns an error raised while it parses a form into a 400, so an over-long chunked body is
    marked here and the app's response is swapped for the 413 on its way out.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path: str = UPLOAD_PATH):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._reject(send)
        state = {"seen": 0, "over": False, "replaced": False}

        async def counted_receive():
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > self.max_bytes:
                state["over"] = True
                raise ValueError("request body over the limit")
            return message

        async def guarded_send(message):
            if state["over"]:
                if not state["replaced"]:
                    state["replaced"] = True
                    await self._reject(send)
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except ValueError:
            if not state["over"]:
                raise
            if not state["replaced"]:
                await self._reject(send)

    async def _reject(self, send: Send):
        body = json.dumps({"detail": f"the upload is over the server's limit of {self.max_bytes:,} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
    app.state.settings = settings
    app.state.engine = prepare_database(settings)
    for module in (tracks, runs, submissions, admin):
        app.include_router(module.router)
    app.include_router(pages.router)
    app.include_router(chat.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)

    @app.get("/healthz", tags=["meta"], summary="Liveness")
    def healthz() -> dict:
        return {"ok": True}

    return app


def serve(host: str = "127.0.0.1", port: int = 8000, *, settings: Settings | None = None) -> None:
    """`speedrun serve`: run the leaderboard under uvicorn (blocks)."""
    app = create_app(settings)
    print(f"leaderboard on http://{host}:{port} (database {database_url(app.state.settings).split('@')[-1]})")
    uvicorn.run(app, host=host, port=port, log_level="info")


if __name__ == "__main__":
    serve()
