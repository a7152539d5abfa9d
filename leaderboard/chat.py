"""Chat with the top models: which runs are served, loading them, hot swaps, and limited streaming generation.

One model per division: the best verified run of the top-ranked submission of a track (ChatSettings.track;
unset: the first track by name with a verified run of that division; nothing ranked yet: the best verified
run). Clients name it by its id: the track's name for the closed division (`cpu-books`), `<track>-open`
for the open one (`cpu-books-open`); a run id names it too. A closed checkpoint is a baseline model that
frozen code loads (baseline/engine.py, a KV cache); its weights are the uploaded bundle's
model.safetensors, read with safetensors only (no pickle). An open one is its submission's code, which
this process never imports: leaderboard/open_chat.py unpacks the bundle's source.tar and runs the model
in a warm sandboxed process that returns next-token logits, and this side samples
(eval/open_generation.py; no KV cache there: a full forward over the context per token). Without
bubblewrap no open model is served: /v1/models says why in one line and a request for it gets 503 with
the fix. If a chat-tuned child of a closed run (`harness.chat_tune`) lies in ChatSettings.runs_dir, that
child is served in chat style; otherwise a model is served completion style (the conversation's text is
continued) and /v1/models, /health and the page say so.

Hot swap: `ChatService.refresh()` looks each division's top run up (a background thread does so every
poll_s, so a verification by the worker process shows within that time); when it changed, the new model is
loaded while the old one keeps answering, then the reference is replaced in one assignment. A request keeps
the model it started with until it ends (a swapped-out open model's process ends with its last request).

Limits (ChatSettings): prompt tokens, max_tokens, n; at most `max_concurrent` generations run and
`max_queued` more wait (the next one gets 429); a request that waits or runs longer than `timeout_s`
ends with a timeout. Settings come from the environment, prefix LEADERBOARD_CHAT_ (e.g.
LEADERBOARD_CHAT_TRACK=cpu-books LEADERBOARD_CHAT_RUNS_DIR=runs speedrun serve).
"""

import asyncio
import codecs
import collections
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Engine as DbEngine
from sqlmodel import Session, select

from baseline.checkpoint import read_meta
from baseline.engine import Engine, render_for_reply
from baseline.tokenizer import Tokenizer
from eval.open_generation import SandboxedEngine
from leaderboard import crud, open_chat, ranking
from leaderboard.models import Run, Standing, Submission, TrackRow, Verification
from leaderboard.recompute import load_checkpoint
from leaderboard.resources import server_facts
from leaderboard.settings import Settings
from protocol.record import RECORD_FILE, read_record
from protocol.tracks import DIVISIONS
from sandbox import Limits

log = logging.getLogger("leaderboard.chat")


class ChatSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADERBOARD_CHAT_", extra="ignore")

    track: str | None = None  # whose top run is served; None: the first track (by name) with a verified run
    runs_dir: Path | None = None  # chat-tuned child runs (harness.chat_tune) looked up by parent run id
    device: str = "cpu"
    poll_s: float = 30.0  # how often the background thread looks for a new top run (0: never)
    max_prompt_tokens: int = 2048
    max_prompt_chars: int = 32_768  # checked before tokenizing (a token is rarely over 16 characters)
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256
    max_n: int = 4  # choices per request (the engine decodes them as one batch)
    max_concurrent: int = 2  # generations running at once
    max_queued: int = 8  # generations waiting for a slot; beyond that: 429
    timeout_s: float = 120.0  # queue wait + generation
    stream_interval_s: float = 0.02  # tokens that come faster are sent together (0: a chunk per token)
    # An open model's sandboxed process (leaderboard/open_chat.py): kept warm, restarted after its wall time.
    open_threads: int = 2  # its torch threads
    open_memory_bytes: int = 8 * 1024**3
    open_wall_s: float = 7 * 24 * 3600.0
    open_start_timeout_s: float = 300.0  # python, torch and the model loaded


class Busy(RuntimeError):
    """Every generation slot and queue place is taken (HTTP 429)."""


class GenerationTimeout(RuntimeError):
    """The request waited or generated longer than ChatSettings.timeout_s (HTTP 504)."""


@dataclass
class ServedModel:
    engine: Engine | SandboxedEngine  # closed: baseline's, a KV cache; open: the sandboxed model's logits
    info: dict  # id, division, mode, run_id, track, submission, submitter, rank, stats, loaded_at, ...
    key: tuple = ()  # what was loaded: (run_id, bundle sha256, chat checkpoint or None)

    @property
    def is_chat(self) -> bool:
        return self.info.get("mode") == "chat"

    @property
    def division(self) -> str:
        return self.info.get("division", "closed")

    @property
    def max_positions(self) -> int:
        if isinstance(self.engine, SandboxedEngine):
            return self.engine.sequence_len
        return self.engine.model.cos.size(1)

    def retire(self) -> None:
        """Swapped out: an open model's process ends once its last request does."""
        if isinstance(self.engine, SandboxedEngine):
            self.engine.retire()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Chat style: the rendered conversation + `<|assistant_start|>`; completion style: BOS + the text
        of every message joined by blank lines (the base model continues it)."""
        tok = self.engine.tokenizer
        if self.is_chat:
            return render_for_reply(tok, messages)
        return tok.encode("\n\n".join(m["content"] for m in messages), prepend=tok.bos_id)


def local_served(model, tokenizer, *, name: str = "local", mode: str = "completion") -> ServedModel:
    """A model that is not from the board (benchmarks, tests): swap it in with ChatService.swap()."""
    info = {
        "id": name,
        "division": "closed",
        "mode": mode,
        "track": None,
        "metric": None,
        "run_id": name,
        "submission_id": None,
        "submission": None,
        "submitter": "local",
        "rank": None,
        "run": {},
        "standing": None,
        "chat_checkpoint": None,
        "loaded_at": time.time(),
        "model_config": model.config.to_dict(),
    }
    return ServedModel(Engine(model, tokenizer), info, ("local", name))


# ------------------------------------------------------------------ which run is the top one


def _order(v: Verification, track: TrackRow) -> tuple[float, float]:
    """Best recomputed metric first, then the fastest."""
    metric = v.recomputed_core if track.metric == "core" else v.recomputed_val_bpb
    sign = -1.0 if track.higher_is_better else 1.0
    return (sign * metric if metric is not None else float("inf"), v.recomputed_train_time_s or 0.0)


def model_id(track_name: str, division: str) -> str:
    """The name clients send: the track's for the closed division, `<track>-open` for the open one."""
    return track_name if division == "closed" else f"{track_name}-{division}"


def top_run(
    session: Session, *, track_name: str | None, division: str = "closed"
) -> tuple[TrackRow, Run, Standing | None, int | None] | None:
    """(track, run, its submission's standing, rank) of the division's run to serve, or None if none is verified."""
    tracks = [crud.get_track(session, name=track_name)] if track_name else session.exec(select(TrackRow)).all()
    for track in sorted((t for t in tracks if t is not None), key=lambda t: t.name):
        verified = session.exec(
            select(Run, Verification)
            .join(Verification, Verification.run_pk == Run.id)
            .join(Submission, Submission.id == Run.submission_id)
            .where(Run.track_id == track.id, Verification.status == "verified", Submission.division == division)
        ).all()
        if not verified:
            continue
        board = [s for s in ranking.leaderboard(session, track=track, division=division) if s.rank is not None]
        rank = None
        if board:
            rank = board[0].rank
            verified = [(r, v) for r, v in verified if r.submission_id == board[0].submission_id] or verified
        run = min(verified, key=lambda rv, t=track: _order(rv[1], t))[0]
        standing = session.exec(
            select(Standing).where(Standing.track_id == track.id, Standing.submission_id == run.submission_id)
        ).first()
        return track, run, standing, rank if rank is not None and standing and standing.qualifies else None
    return None


def chat_checkpoint(runs_dir: Path | None, parent_run_id: str) -> Path | None:
    """The newest completed chat-tuned child of `parent_run_id` under runs_dir (its checkpoint dir), or None."""
    if runs_dir is None or not Path(runs_dir).is_dir():
        return None
    found = []
    for record_path in Path(runs_dir).glob(f"*/{RECORD_FILE}"):
        try:
            record = read_record(record_path.parent)
        except (OSError, ValueError):  # a damaged or foreign record is not a chat model
            continue
        if record.parent_run_id == parent_run_id and record.status == "completed" and record.files.checkpoint:
            ckpt = record_path.parent / record.files.checkpoint
            if (ckpt / "meta.json").is_file() and read_meta(ckpt).get("chat_tuned"):
                found.append((record.finished or "", ckpt))
    return max(found)[1] if found else None


def describe(
    session: Session, track: TrackRow, run: Run, standing: Standing | None, rank, chat_ckpt, division: str = "closed"
) -> dict:
    """What the API and the page show about the served model."""
    public = crud.run_public(session, run=run)
    return {
        "id": model_id(track.name, division),  # the model name clients send: "the top model of this track"
        "division": division,
        "mode": "chat" if chat_ckpt else "completion",
        "track": track.name,
        "metric": track.metric,
        "run_id": run.run_id,
        "submission_id": run.submission_id,
        "submission": public.submission,
        "submitter": public.submitter,
        "rank": rank,
        "run": {k: getattr(run, k) for k in ("train_time_s", "val_bpb", "core", "hardware", "steps", "seed")},
        "standing": None
        if standing is None
        else {
            k: getattr(standing, k)
            for k in ("n_verified", "time_mean_s", "time_std_s", "metric_mean", "val_bpb_mean", "core_mean", "p_value")
        },
        "chat_checkpoint": str(chat_ckpt) if chat_ckpt else None,
    }


def load_served(
    session: Session, settings: Settings, chat: ChatSettings, division: str = "closed"
) -> ServedModel | None:
    """Load the division's top run's model (a closed run's chat-tuned child if there is one); None when no run
    is verified. An open model's process is started in the sandbox (leaderboard/open_chat.py)."""
    found = top_run(session, track_name=chat.track, division=division)
    if found is None:
        return None
    track, run, standing, rank = found
    ckpt = chat_checkpoint(chat.runs_dir, run.run_id) if division == "closed" else None
    info = describe(session, track, run, standing, rank, ckpt, division)
    tokenizer_dir = server_facts(track, settings).tokenizer_dir
    if tokenizer_dir is None:
        raise FileNotFoundError(f"the server has no tokenizer for track {track.name}: set LEADERBOARD_TRACK_RESOURCES")
    bundle_dir = Path(settings.storage_dir) / "bundles" / run.bundle_sha256
    key = (run.run_id, run.bundle_sha256, str(ckpt) if ckpt else None)
    if division == "open":
        tokenizer = Tokenizer.load(tokenizer_dir)
        limits = Limits(wall_s=chat.open_wall_s, memory_bytes=chat.open_memory_bytes)
        engine = open_chat.load_engine(
            run, bundle_dir, tokenizer, work_dir=open_chat.work_dir_for(settings.storage_dir, run),
            threads=chat.open_threads, limits=limits, start_timeout_s=chat.open_start_timeout_s,
        )  # fmt: skip
        info |= {"loaded_at": time.time(), "model_config": read_meta(bundle_dir)["model_config"]}
        info["load_s"] = engine.process.start_s
        return ServedModel(engine, info, key)
    model, tokenizer = load_checkpoint(ckpt or bundle_dir, tokenizer_dir=tokenizer_dir, device=chat.device)
    info["loaded_at"] = time.time()
    info["model_config"] = model.config.to_dict()
    return ServedModel(Engine(model, tokenizer), info, key)


def current_key(session: Session, chat: ChatSettings, division: str = "closed") -> tuple | None:
    """What load_served would load now, without loading it (cheap: a few queries and a directory scan)."""
    found = top_run(session, track_name=chat.track, division=division)
    if found is None:
        return None
    track, run = found[0], found[1]
    ckpt = chat_checkpoint(chat.runs_dir, run.run_id) if division == "closed" else None
    return (run.run_id, run.bundle_sha256, str(ckpt) if ckpt else None), model_id(track.name, division)


# ------------------------------------------------------------------ streaming text out of token ids


class Detokenizer:
    """Token ids in, new text out, O(1) per token: an incremental UTF-8 decoder over each token's bytes holds
    text back while it ends inside a multi-byte character (the same text as decoding all ids at once)."""

    def __init__(self, tokenizer):
        self._token_bytes = tokenizer._enc.decode_single_token_bytes  # tiktoken: the raw bytes of one token
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._token_bytes(token))

    def flush(self) -> str:
        """Whatever is held back, as it decodes (with replacement characters) now that no token follows."""
        return self._utf8.decode(b"", final=True)


@dataclass
class Step:
    """What one decode step produced: per choice index, new text and (once) why it finished."""

    deltas: dict[int, str] = field(default_factory=dict)
    finished: dict[int, str] = field(default_factory=dict)  # index -> "stop" | "length"


# ------------------------------------------------------------------ the service


class ChatService:
    """The served model reference, the swap, the polling thread and the generation limits."""

    def __init__(
        self,
        chat: ChatSettings | None = None,
        *,
        settings: Settings | None = None,
        db: DbEngine | None = None,
        poll: bool = True,
    ):
        """`poll=False` (tests, benchmarks): no background refresh; the model changes only by refresh() or swap()."""
        self.chat = chat or ChatSettings()
        self.settings, self.db = settings, db
        self._served: dict[str, ServedModel] = {}  # division -> its model
        self.unavailable: dict[str, str] = {}  # model id -> why it is not served (one line: no sandbox)
        self.errors: dict[str, str] = {}  # division -> why its model could not be loaded
        self._slots = threading.Semaphore(self.chat.max_concurrent)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.admitted = 0  # running + waiting
        self.running = 0
        self.swaps = 0
        self.looked = 0  # refreshes that reached the database (0: still starting up)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.poll = poll

    # ---------------------------------------------------------- the model

    @property
    def current(self) -> ServedModel | None:
        """The closed division's model (the open one's if it is the only one): what the page shows."""
        return self._served.get("closed") or next(iter(self._served.values()), None)

    def models(self) -> list[ServedModel]:
        """Every served model, closed first."""
        return [m for m in map(self._served.get, DIVISIONS) if m is not None]

    def find(self, name: str) -> ServedModel | None:
        """The served model a request names (its id, or its run id)."""
        return next((m for m in self.models() if name in (m.info["id"], m.info["run_id"])), None)

    @property
    def last_error(self) -> str | None:
        return "; ".join(f"{d}: {e}" if len(self.errors) > 1 else e for d, e in self.errors.items()) or None

    def swap(self, served: ServedModel | None, division: str | None = None) -> None:
        """Serve `served` for its division from now on (one assignment: requests in flight keep the model they
        hold); None stops serving `division`. A swapped-out open model's process ends after its last request."""
        division = division or (served.division if served is not None else "closed")
        old = self._served.get(division)
        if served is None:
            self._served.pop(division, None)
        else:
            self._served[division] = served
        self.swaps += 1
        if old is not None and old is not served:
            old.retire()
        log.info("chat: serving %s (was %s)", served and served.info.get("run_id"), old and old.info.get("run_id"))

    def refresh(self) -> bool:
        """Load and swap in each division's top run if it is not the one served; True when a swap happened."""
        if self.db is None or self.settings is None:
            return False
        swapped = False
        with self._refresh_lock:
            for division in DIVISIONS:
                swapped = self._refresh(division) or swapped
            self.looked += 1
        return swapped

    def _refresh(self, division: str) -> bool:
        try:
            with Session(self.db) as session:
                found = current_key(session, self.chat, division)
                if found is None:
                    return False
                key, name = found
                why = open_chat.unavailable() if division == "open" else None
                if why:  # not served here: /v1/models and a request for it say why
                    self.unavailable[name] = why
                    return False
                self.unavailable.pop(name, None)
                served = self._served.get(division)
                if served is not None and served.key == key:
                    return False
                served = load_served(session, self.settings, self.chat, division)
        except Exception as e:  # noqa: BLE001 -- keep serving the old model; /health shows why
            self.errors[division] = f"{type(e).__name__}: {e}"
            log.exception("chat: could not load the top %s run", division)
            return False
        self.errors.pop(division, None)
        self.swap(served, division)
        return True

    def start(self) -> None:
        """The first refresh and the polling thread (once); called lazily by the routes."""
        with self._lock:
            if self._poller is not None or not self.poll:
                return
            self._poller = threading.Thread(target=self._poll, name="chat-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            if self.chat.poll_s <= 0 or self._stop.wait(self.chat.poll_s):
                return

    def close(self) -> None:
        self._stop.set()
        for served in self.models():
            served.retire()

    # ---------------------------------------------------------- generation

    @property
    def queued(self) -> int:
        return self.admitted - self.running

    def generate(
        self, served: ServedModel, prompt: list[int], *, n: int, max_tokens: int, temperature: float, top_k, seed: int
    ) -> "Generation":
        """Admit a generation (Busy when the queue is full) and start it on its own thread."""
        with self._lock:
            if self.admitted >= self.chat.max_concurrent + self.chat.max_queued:
                raise Busy(
                    f"{self.running} generations running and {self.queued} waiting, the server's limit: "
                    "try again in a few seconds"
                )
            self.admitted += 1
        gen = Generation(self, served, prompt, n, max_tokens, temperature, top_k, seed)
        gen.thread.start()
        return gen

    def _run(self, gen: "Generation") -> None:
        try:
            if not self._slots.acquire(timeout=max(0.0, gen.deadline - time.monotonic())):
                gen.put(
                    GenerationTimeout(f"waited {self.chat.timeout_s:g} s for a free generation slot: try again later")
                )
                return
            with self._lock:
                self.running += 1
            try:
                gen.produce()
            finally:
                with self._lock:
                    self.running -= 1
                self._slots.release()
        except Exception as e:  # noqa: BLE001 -- handed to the request, which answers 500 with the reason
            gen.put(e)
        finally:
            with self._lock:
                self.admitted -= 1


class Generation:
    """One request's generation: a thread decodes and hands Steps over; the request's event loop reads them."""

    def __init__(self, service: ChatService, served: ServedModel, prompt, n, max_tokens, temperature, top_k, seed):
        self.service, self.served = service, served
        self.args = dict(num_samples=n, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        self.prompt, self.n = prompt, n
        self.deadline = time.monotonic() + service.chat.timeout_s
        self.cancelled = threading.Event()
        self.completion_tokens = [0] * n
        # Steps go into a deque; the event loop is woken only when it is not already due to wake, so a
        # busy loop costs the generating thread no extra wake-ups (each is a syscall and a GIL hand-over).
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()
        self._wake_lock = threading.Lock()
        self._wake_due = False
        self._last_wake = -math.inf
        self.thread = threading.Thread(target=service._run, args=(self,), name="chat-generation", daemon=True)

    def put(self, item) -> None:
        """From the generation thread: a Step, None (the end) or an exception.

        A Step within stream_interval_s of the last wake-up waits for the next one (the end always
        wakes): a fast model's tokens then go out a few per chunk and the event loop, which shares
        the GIL with this thread, runs at most 1 / stream_interval_s times a second per stream.
        """
        self._items.append(item)
        now = time.monotonic()
        if isinstance(item, Step) and now - self._last_wake < self.service.chat.stream_interval_s:
            return
        self._last_wake = now
        with self._wake_lock:
            if self._wake_due:
                return
            self._wake_due = True
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the request's event loop is gone (client left): stop generating
            self.cancelled.set()

    def _take(self) -> list:
        with self._wake_lock:
            self._wake_due = False
            self._ready.clear()
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    def produce(self) -> None:
        """On the generation thread: decode, turn tokens into text per choice, hand each step over."""
        engine = self.served.engine
        args = self.args | ({"deadline": self.deadline} if isinstance(engine, SandboxedEngine) else {})
        with contextlib.closing(engine.generate(self.prompt, **args)) as columns:
            try:
                self._decode(engine, columns)
            except (
                TimeoutError
            ):  # an open model's process answered too late (it is killed; the next request restarts it)
                limit = self.service.chat.timeout_s
                self.put(GenerationTimeout(f"generation ran past the server's limit of {limit:g} s: the model is slow"))

    def _decode(self, engine, columns) -> None:
        texts = [Detokenizer(engine.tokenizer) for _ in range(self.n)]
        done: dict[int, str] = {}
        for column in columns:
            if self.cancelled.is_set():
                return
            step = Step()
            for i, token in enumerate(column):
                if i in done:
                    continue
                if token in engine.stop_ids:
                    done[i] = step.finished[i] = "stop"
                    if rest := texts[i].flush():
                        step.deltas[i] = rest
                    continue
                self.completion_tokens[i] += 1
                if delta := texts[i].push(token):
                    step.deltas[i] = delta
            if time.monotonic() > self.deadline:
                self.put(step)
                limit = self.service.chat.timeout_s
                self.put(
                    GenerationTimeout(
                        f"generation ran past the server's limit of {limit:g} s: ask for fewer max_tokens"
                    )
                )
                return
            self.put(step)
        last = Step(finished={i: "length" for i in range(self.n) if i not in done})
        for i in last.finished:
            if rest := texts[i].flush():
                last.deltas[i] = rest
        if last.finished:
            self.put(last)
        self.put(None)

    async def steps(self):
        """Async iterator of Steps; raises GenerationTimeout or the generation's error; cancels on exit.

        Steps that queued up while the client was being written to are merged into one, so a slow
        reader gets fewer, larger chunks instead of falling behind the generation.
        """
        try:
            while True:
                remaining = self.deadline - time.monotonic() + 5.0  # the thread reports its own timeout first
                try:
                    if not self._ready.is_set():
                        await asyncio.wait_for(self._ready.wait(), timeout=max(remaining, 0.1))
                except TimeoutError:
                    limit = self.service.chat.timeout_s
                    raise GenerationTimeout(f"no token within the server's limit of {limit:g} s") from None
                items = self._take()
                if not items:
                    continue
                merged = Step()
                for item in items:
                    if isinstance(item, Step):
                        for i, delta in item.deltas.items():
                            merged.deltas[i] = merged.deltas.get(i, "") + delta
                        merged.finished |= item.finished
                if merged.deltas or merged.finished:
                    yield merged
                if items[-1] is None:
                    return
                if isinstance(items[-1], BaseException):
                    raise items[-1]
        finally:
            self.cancelled.set()
