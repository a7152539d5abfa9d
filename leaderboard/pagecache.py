"""Board reads built once and served as bytes, with an ETag: a repeat costs neither database nor template.

    return await cached_response(request, ttl_s, build, "text/html; charset=utf-8")    # in a GET route
    app.add_middleware(ServeCached)       # a fresh hit is answered here, before routing and dependencies

Values are keyed by the request's path and query string, so the middleware can answer a repeat
without entering FastAPI at all (what makes a cached read cost ~0.1 ms rather than ~1 ms).

`build()` runs on a builder thread on a miss and returns the body (str or bytes), or (body, headers) for
headers that belong to it (a next-page cursor); hits are served from memory without a thread hop.
Every response carries a strong ETag (sha256 of the body, cut to 32 hex) and `Cache-Control: public,
max-age=<ttl>`; a request whose If-None-Match names it gets a 304.
A value lives Settings.cache_ttl_s (a write in this process clears everything at once: READS.clear()).
Single flight: once a value has expired, one caller rebuilds it while the others keep getting the stale
value for that moment, so an expiry under load costs one rebuild, not one per client.
"""

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_ENTRIES = 20_000  # run pages are cached per run: bound the memory (~ a few KB each)
BUILDERS = ThreadPoolExecutor(4, thread_name_prefix="page-build")


class ReadCache:
    """A tiny TTL cache of (body, etag) per key, cleared on any write in this process."""

    def __init__(self):
        self._data: dict = {}  # key -> (expires at, value)
        self._refreshing: set = set()
        self._lock = threading.Lock()

    def get(self, key, ttl_s: float, compute: Callable):
        if ttl_s <= 0:
            return compute()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and (hit[0] > time.monotonic() or key in self._refreshing):
                return hit[1]
            self._refreshing.add(key)
        try:
            value = compute()
            with self._lock:
                if len(self._data) >= MAX_ENTRIES:
                    self._data.clear()
                self._data[key] = (time.monotonic() + ttl_s, value)
            return value
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def fresh(self, key):
        """The value of `key` while it has not expired (or is being rebuilt), else None; never computes."""
        hit = self._data.get(key)
        if hit is not None and (hit[0] > time.monotonic() or key in self._refreshing):
            return hit[1]
        return None

    async def get_async(self, key, ttl_s: float, compute: Callable):
        """As get(), for an async endpoint: a hit costs no thread hop; a miss computes on BUILDERS.

        A few builder threads, not the request pool: a build can wait on the database (SQLite makes a
        reader wait while a writer resets its log), which must never hold the event loop, and a hundred
        threads contending for the GIL at once would make a convoy of every read."""
        hit = self._data.get(key) if ttl_s > 0 else None
        if hit is not None and (hit[0] > time.monotonic() or key in self._refreshing):
            return hit[1]
        return await asyncio.get_running_loop().run_in_executor(BUILDERS, self.get, key, ttl_s, compute)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


READS = ReadCache()


def _with_etag(build: Callable, ttl_s: float, media_type: str) -> Callable[[], tuple[bytes, dict]]:
    def compute() -> tuple[bytes, dict]:
        built = build()
        body, extra = built if isinstance(built, tuple) else (built, {})
        body = body.encode() if isinstance(body, str) else body
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        cache = f"public, max-age={max(int(ttl_s), 0)}"
        return body, {"ETag": etag, "Cache-Control": cache, "Content-Type": media_type, **extra}

    return compute


def _key(path: str, query: bytes | str):
    return path, query.decode("latin-1") if isinstance(query, bytes) else query


async def cached_response(request: Request, ttl_s: float, build: Callable, media_type: str) -> Response:
    key = _key(request.url.path, request.url.query)
    body, headers = await READS.get_async(key, ttl_s, _with_etag(build, ttl_s, media_type))
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers)


class ServeCached:
    """Answers a GET whose path and query have a fresh cached value, before the app sees it (304 or 200)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] == "http" and scope["method"] == "GET":
            hit = READS.fresh(_key(scope["path"], scope.get("query_string", b"")))
            if hit is not None:
                body, headers = hit
                wanted = dict(scope.get("headers") or []).get(b"if-none-match", b"").decode("latin-1")
                status, body = (304, b"") if headers["ETag"] in wanted else (200, body)
                raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
                raw.append((b"content-length", str(len(body)).encode()))
                await send({"type": "http.response.start", "status": status, "headers": raw})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
