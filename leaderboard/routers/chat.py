"""Chat with the top model: an OpenAI-compatible API and a page that streams the reply as it is generated.

GET  /health                 200 with what is served, 503 while no model is (loading, nothing verified)
GET  /v1/models              the served models, one per division (id: the track's name for the closed one,
                             `<track>-open` for the open one; `mode` chat or completion); `unavailable`
                             names a model that is not served and why (an open one without bubblewrap)
POST /v1/chat/completions    OpenAI's shape; `stream: true` answers with SSE `chat.completion.chunk`
                             events ending with `data: [DONE]`
POST /api/admin/chat/reload  (admin) look for a new top run now and swap it in
GET  /chat?model=ID          the chat page (unset: the closed division's model; links to the others)

Errors before a reply starts are HTTP errors with a `detail`: 400 (limits, turn order), 404 (unknown
model), 413 (a body over Settings.max_chat_body_bytes, refused before it is read), 422 (malformed
body, NaN or out-of-range numbers), 429 (queue full, with Retry-After), 503 (no model; an open model
without the sandbox, or whose sandboxed process died: the next request restarts it), 504 (timeout).
The prompt's characters are capped (ChatSettings.max_prompt_chars) before it is tokenized, and the
tokenizing runs on the thread pool, never on the event loop. A client that goes away ends its
generation, streaming or not. An
error after a stream started is an SSE event `{"error": {...}}` followed by `[DONE]`. /health and
/v1/chat/completions are left out of the OpenAPI schema: their 503/504 answers are by design, and the
schema fuzz test holds every documented route to "never a 5xx".
"""

import asyncio
import json
import secrets
import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from eval.open_generation import ModelFailed
from leaderboard.chat import Busy, ChatService, ChatSettings, GenerationTimeout, ServedModel
from leaderboard.deps import CurrentAdmin
from leaderboard.routers.pages import templates  # the same Jinja2 environment and filters

router = APIRouter(tags=["chat"])
DEFAULT_TEMPERATURE, DEFAULT_TOP_K = 0.8, 50  # nanochat's chat defaults
_create_lock = threading.Lock()


def chat_service(request: Request) -> ChatService:
    """The app's ChatService, made and started on first use (tests may set app.state.chat themselves)."""
    app = request.app
    with _create_lock:
        if getattr(app.state, "chat", None) is None:
            app.state.chat = ChatService(ChatSettings(), settings=app.state.settings, db=app.state.engine)
    app.state.chat.start()
    return app.state.chat


def served_or_error(service: ChatService, name: str) -> ServedModel:
    """The served model `name` names; 503 when it cannot be served here or nothing is, else 404 naming the ids."""
    if name in service.unavailable:
        raise HTTPException(503, detail=f"model {name!r} is not served here: {service.unavailable[name]}")
    served = service.find(name)
    if served is not None:
        return served
    models = service.models()
    if not models:
        track = service.chat.track or "any track"
        why = service.last_error or (f"no verified run on {track} yet" if service.looked else "the model is loading")
        raise HTTPException(503, detail=f"no model is served: {why}; try again later")
    ids = " or ".join(repr(m.info["id"]) for m in models)
    raise HTTPException(404, detail=f"model {name!r} is not served here: use {ids}")


# ------------------------------------------------------------------ request and response shapes


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(max_length=100)]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # extra="ignore": clients send OpenAI fields we do not use (user, ...); NaN and infinities are refused
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field(max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=500)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_k: int | None = Field(default=None, ge=1, le=1 << 20)  # not OpenAI's: nanochat's sampler; no top_p
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 20)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1 << 20)
    n: int = Field(default=1, ge=1, le=1000)
    seed: int | None = Field(default=None, ge=0, lt=2**63)  # torch's generator takes a signed 64-bit seed
    stop: str | list[str] | None = None


def check_turns(messages: list[dict]) -> None:
    """A chat model needs optional system, then user/assistant turns alternating, ending with user."""
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise HTTPException(400, detail="a system message may only come first")
    turns = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise HTTPException(400, detail=f"message {i} is {role!r} but {expected!r} was expected: turns alternate")
    if turns and turns[-1] != "user":
        raise HTTPException(400, detail="the last message must be the user's: the model answers it")


def prepare(body: ChatCompletionRequest, service: ChatService) -> tuple[ServedModel, list[int], dict]:
    """Validate against the served model and the limits; (served, prompt ids, generation arguments)."""
    served, limits = served_or_error(service, body.model), service.chat
    if body.stop:
        raise HTTPException(400, detail="stop sequences are not supported: the model stops at <|assistant_end|>")
    if body.n > limits.max_n:
        raise HTTPException(400, detail=f"n = {body.n} is over this server's limit of {limits.max_n}")
    max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise HTTPException(400, detail=f"max_tokens = {max_tokens} is over this server's limit of {limits.max_tokens}")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_prompt_chars:  # before tokenizing: the tokenizer's work grows with the text
        raise HTTPException(
            400,
            detail=f"the messages hold {chars:,} characters, over this server's limit of {limits.max_prompt_chars:,}",
        )
    if served.is_chat:
        check_turns(messages)
    prompt = served.prompt_ids(messages)
    if len(prompt) > limits.max_prompt_tokens:
        raise HTTPException(
            400, detail=f"the prompt is {len(prompt)} tokens, over this server's limit of {limits.max_prompt_tokens}"
        )
    if len(prompt) + max_tokens > served.max_positions:
        raise HTTPException(
            400,
            detail=f"prompt ({len(prompt)}) + max_tokens ({max_tokens}) is over the model's "
            f"{served.max_positions} positions: shorten the conversation or ask for fewer tokens",
        )
    temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    args = dict(
        n=body.n,
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=body.top_k or DEFAULT_TOP_K,
        seed=secrets.randbits(31) if body.seed is None else body.seed,
    )
    return served, prompt, args


def _usage(prompt: list[int], gen) -> dict:
    completion = sum(gen.completion_tokens)
    return {"prompt_tokens": len(prompt), "completion_tokens": completion, "total_tokens": len(prompt) + completion}


def _fingerprint(served: ServedModel) -> str:
    return f"{served.info['run_id']}:{served.info['mode']}"


# ------------------------------------------------------------------ routes


@router.get("/health", summary="What is served (503 while nothing is)", include_in_schema=False)
async def health(request: Request):
    service = chat_service(request)
    served = service.current
    body = {
        "status": "ok" if served else "unavailable",
        "model": served and served.info["id"],
        "run_id": served and served.info["run_id"],
        "mode": served and served.info["mode"],
        "models": [m.info["id"] for m in service.models()],
        "running": service.running,
        "queued": service.queued,
        "swaps": service.swaps,
        "error": service.last_error,
    }
    return JSONResponse(body, status_code=200 if served else 503)


@router.get("/v1/models", summary="The served models, one per division (OpenAI shape)")
async def list_models(request: Request) -> dict:
    service = chat_service(request)
    data = [
        {
            "id": info["id"],
            "object": "model",
            "created": int(info["loaded_at"]),
            "owned_by": info["submitter"],
            **{k: info.get(k) for k in ("division", "mode", "track", "run_id", "submission", "rank")},
        }
        for info in (m.info for m in service.models())
    ]
    body = {"object": "list", "data": data}
    if service.unavailable:
        body["unavailable"] = [{"id": name, "reason": why} for name, why in service.unavailable.items()]
    return body


@router.post(
    "/v1/chat/completions",
    include_in_schema=False,  # OpenAI's API reference documents it; its 503/504 are by design (schemathesis: no 5xx)
    summary="Chat completion (OpenAI shape; stream: true for SSE chunks)",
    responses={
        400: {"description": "Over a limit or turns out of order"},
        404: {"description": "Unknown model"},
        429: {"description": "Too many generations"},
        503: {"description": "No model served"},
        504: {"description": "Timed out"},
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    service = chat_service(request)
    served, prompt, args = await run_in_threadpool(prepare, body, service)  # tokenizing: off the event loop
    try:
        gen = service.generate(served, prompt, **args)
    except Busy as e:
        raise HTTPException(429, detail=str(e), headers={"Retry-After": "5"}) from None
    completion_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    head = {
        "id": completion_id,
        "created": created,
        "model": served.info["id"],
        "system_fingerprint": _fingerprint(served),
    }
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse_events(gen, head, prompt, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    texts, finish = [""] * body.n, [None] * body.n
    watcher = asyncio.create_task(_cancel_when_gone(request, gen))
    try:
        async for step in gen.steps():
            for i, delta in step.deltas.items():
                texts[i] += delta
            for i, reason in step.finished.items():
                finish[i] = reason
    except GenerationTimeout as e:
        raise HTTPException(504, detail=str(e)) from None
    except ModelFailed as e:
        raise HTTPException(503, detail=str(e)) from None
    except Exception as e:  # noqa: BLE001 -- the generation thread failed: say why rather than a bare 500
        raise HTTPException(500, detail=f"generation failed: {type(e).__name__}: {e}") from None
    finally:
        watcher.cancel()
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts[i]},
            "logprobs": None,
            "finish_reason": finish[i],
        }
        for i in range(body.n)
    ]
    return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(prompt, gen)}


async def _cancel_when_gone(request: Request, gen, every_s: float = 0.25) -> None:
    """Stop a non-streaming generation whose client went away (a stream stops when its write fails)."""
    while not gen.cancelled.is_set():
        if await request.is_disconnected():
            gen.cancelled.set()
            return
        await asyncio.sleep(every_s)


async def sse_events(gen, head: dict, prompt: list[int], include_usage: bool):
    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def chunk(choices: list[dict], **extra) -> str:
        return event({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

    yield chunk(
        [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for i in range(gen.n)
        ]
    )
    try:
        async for step in gen.steps():
            choices = [
                {
                    "index": i,
                    "delta": {"content": step.deltas[i]} if i in step.deltas else {},
                    "logprobs": None,
                    "finish_reason": step.finished.get(i),
                }
                for i in sorted(step.deltas.keys() | step.finished.keys())
            ]
            if choices:
                yield chunk(choices)
    except GenerationTimeout as e:
        yield event({"error": {"message": str(e), "type": "timeout", "code": 504}})
    except ModelFailed as e:
        yield event({"error": {"message": str(e), "type": "model_unavailable", "code": 503}})
    except Exception as e:  # noqa: BLE001 -- the status line is sent; the client learns why from the stream
        yield event({"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "code": 500}})
    else:
        if include_usage:
            yield chunk([], usage=_usage(prompt, gen))
    yield "data: [DONE]\n\n"


@router.post("/api/admin/chat/reload", summary="Look for a new top run now and swap it in (admin)")
async def reload_model(request: Request, _admin: CurrentAdmin) -> dict:
    service = chat_service(request)
    swapped = await run_in_threadpool(service.refresh)
    served = service.current
    return {"swapped": swapped, "run_id": served and served.info["run_id"], "error": service.last_error}


@router.get("/chat", response_class=HTMLResponse, include_in_schema=False)
async def chat_page(request: Request, model: str | None = None):
    """The chat with `model` (an id of /v1/models; unset: the closed division's), links to the others."""
    service = chat_service(request)
    served = (model and service.find(model)) or service.current
    others = [m.info for m in service.models() if m is not served]
    context = {"info": served and served.info, "limits": service.chat, "error": service.last_error}
    context |= {"others": others, "unavailable": service.unavailable}
    context |= {"default_temperature": DEFAULT_TEMPERATURE}
    return templates.TemplateResponse(request, "chat.html", context)
