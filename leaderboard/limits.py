"""What a client may send: request bodies capped per route before they are read, and rate limits.

    app.add_middleware(BodyLimit, limits=body_limits(settings))     # 413 from Content-Length, or while it streams
    app.add_middleware(RateLimit, settings=settings)                 # 429 with Retry-After

Body caps: an upload may be Settings.max_upload_bytes, a chat request max_chat_body_bytes, a runner's
reproduction result max_result_bytes, anything else max_body_bytes. Rate limits (the `limits` library's
sliding-window counters, notation "600/minute", "" turns one off): every request per client address,
authenticated requests per token, and 401s per client address, which stops token guessing after a few
tries. The counters live in this process (with
several server workers each keeps its own: the effective limit is workers x the setting). The client
address is the socket's peer; X-Forwarded-For is believed only from Settings.trusted_proxies.
"""

import hashlib
import json

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from leaderboard.settings import Settings

UPLOAD_PATH, CHAT_PATH = "/api/runs", "/v1/chat/completions"
RESULT_PATH = "/api/runners/*/jobs/*/result"  # a runner's reproduction result: a loss per step
UNLIMITED_PATHS = ("/healthz",)


async def _reply(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def body_limits(settings: Settings) -> dict[str, int]:
    return {
        UPLOAD_PATH: settings.max_upload_bytes,
        CHAT_PATH: settings.max_chat_body_bytes,
        RESULT_PATH: settings.max_result_bytes,
        "": settings.max_body_bytes,
    }


class BodyLimit:
    """413 for a body over its route's cap: at once from Content-Length, else as soon as the stream passes it.

    FastAPI turns an error raised while it parses a form into a 400, so an over-long chunked body is
    marked here and the app's response is swapped for the 413 on its way out.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int]):
        self.app, self.limits = app, limits

    def _limit(self, path: str) -> int:
        """The cap of `path`: its own, else a pattern's that matches it (`*`: one path segment), else the default."""
        if path in self.limits:
            return self.limits[path]
        parts = path.split("/")
        for pattern, limit in self.limits.items():
            want = pattern.split("/")
            if (
                "*" in pattern
                and len(want) == len(parts)
                and all(w in ("*", p) for w, p in zip(want, parts, strict=True))
            ):
                return limit
        return self.limits[""]

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self._limit(scope["path"].rstrip("/"))
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._reject(send, limit)
        state = {"seen": 0, "over": False, "replaced": False}

        async def counted_receive():
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > limit:
                state["over"] = True
                raise ValueError("request body over the limit")
            return message

        async def guarded_send(message):
            if state["over"]:
                if not state["replaced"]:
                    state["replaced"] = True
                    await self._reject(send, limit)
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except ValueError:
            if not state["over"]:
                raise
            if not state["replaced"]:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int):
        await _reply(send, 413, f"the request body is over this route's limit of {limit:,} bytes")


class RateLimit:
    """429 once a client address, a token, or an address's failed logins pass their limit."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self.per_ip = parse(settings.rate_limit_per_ip) if settings.rate_limit_per_ip else None
        self.per_token = parse(settings.rate_limit_per_token) if settings.rate_limit_per_token else None
        self.failures = parse(settings.rate_limit_auth_failures) if settings.rate_limit_auth_failures else None
        self.proxies = set(settings.trusted_proxies)

    def client(self, scope: Scope) -> str:
        peer = (scope.get("client") or ("unknown", 0))[0]
        if peer in self.proxies:
            forwarded = dict(scope.get("headers") or []).get(b"x-forwarded-for", b"").decode("latin-1")
            return forwarded.split(",")[-1].strip() or peer
        return peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send):
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            return await self.app(scope, receive, send)
        ip = self.client(scope)
        auth = dict(scope.get("headers") or []).get(b"authorization")
        token = hashlib.sha256(auth).hexdigest()[:32] if auth else None
        if auth and self.failures and not self.limiter.test(self.failures, "401", ip):
            return await self._too_many(send, self.failures, "failed logins from your address")
        if self.per_ip and not self.limiter.hit(self.per_ip, "ip", ip):
            return await self._too_many(send, self.per_ip, "requests from your address")
        if token and self.per_token and not self.limiter.hit(self.per_token, "token", token):
            return await self._too_many(send, self.per_token, "requests with this token")

        async def watched_send(message):
            if message["type"] == "http.response.start" and message["status"] == 401 and self.failures:
                self.limiter.hit(self.failures, "401", ip)
            await send(message)

        await self.app(scope, receive, watched_send)

    @staticmethod
    async def _too_many(send: Send, limit, what: str):
        retry = str(limit.get_expiry()).encode()  # at most one window: the sliding counter has slid by then
        await _reply(
            send,
            429,
            f"too many {what}: the limit is {limit}; retry after Retry-After seconds",
            [(b"retry-after", retry)],
        )
