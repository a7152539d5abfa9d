"""Generate text with an open-division model from outside its process: the model runs in the sandbox and
returns next-token logits only; this side samples.

    from eval.open_generation import ModelProcess, SandboxedEngine
    process = ModelProcess(source=DIR, checkpoint=DIR, vocab_size=V, work_dir=DIR)   # runs no model code here
    engine = SandboxedEngine(process, tokenizer, sequence_len=T)
    for column in engine.generate(prompt_ids, num_samples=2, max_tokens=64, temperature=0.8, top_k=50, seed=1):
        ...                                    # baseline.engine.Engine's interface: one new token id per row
    engine.close()

    python -m eval.open_generation --source DIR --checkpoint DIR   # the sandboxed side: ids on stdin, logits on stdout

The model process is started once (`ModelProcess.start`, the chat keeps it warm) in a bubblewrap sandbox
(sandbox/bwrap.py: no network, none of the server's environment, the project, the source and the checkpoint
read-only, its own work dir): `load_open_model` builds the submission's model there, then it answers
requests until its stdin closes. A request is HEADER (rows B, tokens T, int32) and B·T int64 token ids; the
answer is the float32 logits of the last position of every row, B·vocab·4 bytes, which this side reads
exactly, so whatever else the model prints goes to its log, never into a reply. This side chooses every
input, owns the RNG and samples (baseline.engine.sample_next_token, the closed engine's sampler): given the
same logits and seed, the same tokens as baseline.engine.Engine.

No KV cache: every token is a full forward over the whole context (prompt and generated tokens), so a
token costs a forward of the context's length rather than of one position (fine for a demo at a few hundred
tokens; a cache would be the submission's own code and its state, kept in the sandbox). The context never
passes the model's sequence length: generate() refuses a prompt + max_tokens beyond it.

A process that dies, answers short or breaks the protocol raises ModelFailed (one line, the log's last line)
and is killed; the next call starts a fresh one. An answer later than the caller's deadline kills it too
(TimeoutError). GPUs are not passed into sandboxes yet, so the model runs on the CPU.
"""

import argparse
import os
import select
import struct
import sys
import threading
import time
from pathlib import Path

import torch

from baseline.device import destroy_runtime, init_runtime
from baseline.engine import STOP_TOKENS, sample_next_token
from eval.open_model import load_open_model, logits_problem
from protocol.record import EXIT_INVALID, EXIT_OK
from sandbox import Limits
from sandbox import run as run_sandboxed

READY = b"speedrun: open model ready\n"  # the process's first bytes, once its model is loaded
HEADER = struct.Struct("<ii")  # a request: rows, tokens per row (then rows * tokens int64 ids)
INVALID = "speedrun: invalid: "


class ModelFailed(RuntimeError):
    """The model's process ended, answered short or gave unusable logits: one line; the next call restarts it."""


def _read_exactly(fd: int, n: int, deadline: float) -> bytes | None:
    """n bytes from fd; None at the end of the stream; TimeoutError past `deadline` (time.monotonic())."""
    parts, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer from the open model's process within {max(left, 0):.0f} s")
        part = os.read(fd, min(n - got, 1 << 20))
        if not part:
            return None
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    """All of data to fd (non-blocking), TimeoutError past `deadline`: a model that stops reading cannot hang us."""
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            raise TimeoutError("the open model's process stopped reading its requests")
        view = view[os.write(fd, view) :]


def _last_line(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1][:300] if lines else "no output"


class _Running:
    """One live sandbox: its thread, the pipes' ends this side holds, its log."""

    def __init__(self, cmd: list[str], *, work_dir: Path, read_only: list[Path], env: dict, limits: Limits, log: Path):
        self.log, self.stop, self.ran = log, threading.Event(), None
        request_r, self.requests = os.pipe()
        os.set_blocking(self.requests, False)
        self.answers, answer_w = os.pipe()

        def run() -> None:
            try:
                with open(log, "wb") as f:
                    self.ran = run_sandboxed(
                        cmd, work_dir=work_dir, read_only=read_only, env=env, limits=limits, cwd=work_dir,
                        stdin=request_r, stdout=answer_w, stderr=f, tick=lambda: not self.stop.is_set(), tick_s=0.5,
                    )  # fmt: skip
            finally:  # the model's side of the pipes: closed once the sandbox is gone, so this side sees the end
                os.close(request_r)
                os.close(answer_w)

        self.thread = threading.Thread(target=run, name="open-model-process", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.stop.is_set()

    def why_ended(self) -> str:
        self.kill()
        last = _last_line(self.log)
        if self.ran is None or self.ran.status in ("ok", "failed"):
            return f"the open model's process ended: {last.removeprefix(INVALID)}"
        return f"the open model's sandbox ended {self.ran.status}: {self.ran.reason}; its log: {last}"

    def kill(self) -> None:
        """Stop the sandbox (within tick_s) and wait for it; idempotent."""
        self.stop.set()
        for fd in (self.requests, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass  # closed already
        self.requests = self.answers = -1
        self.thread.join()


class ModelProcess:
    """The sandboxed model process of one open checkpoint, (re)started on demand; one request at a time."""

    def __init__(self, *, source: Path, checkpoint: Path, vocab_size: int, work_dir: Path, threads: int = 2,
                 limits: Limits | None = None, start_timeout_s: float = 300.0):  # fmt: skip
        self.source, self.checkpoint, self.vocab_size = Path(source), Path(checkpoint), vocab_size
        self.work_dir, self.threads, self.start_timeout_s = Path(work_dir), threads, start_timeout_s
        self.limits = limits or Limits(wall_s=7 * 24 * 3600.0)
        self.starts = 0  # processes started so far (the logs are log-1.txt, log-2.txt, ...)
        self.start_s: float | None = None  # how long the last start took, the model's loading included
        self._lock = threading.Lock()
        self._running: _Running | None = None

    @property
    def sandbox_dir(self) -> Path:
        """The model's work dir and cwd (its only writable place); the logs lie beside it, out of its reach."""
        return self.work_dir / "sandbox"

    def start(self) -> None:
        """Start the process if none is alive and wait for its model to load (ModelFailed if it cannot)."""
        with self._lock:
            self._ensure(time.monotonic() + self.start_timeout_s)

    def _ensure(self, deadline: float) -> _Running:
        if self._running is not None and self._running.alive:
            return self._running
        if self._running is not None:
            self._running.kill()
        self.sandbox_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        t0 = time.perf_counter()
        repo = Path(__file__).resolve().parents[1]
        cmd = [sys.executable, "-m", "eval.open_generation", "--source", str(self.source),
               "--checkpoint", str(self.checkpoint)]  # fmt: skip
        env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(self.threads), "PYTHONDONTWRITEBYTECODE": "1"}
        self._running = running = _Running(
            cmd, work_dir=self.sandbox_dir, read_only=[repo, self.source, self.checkpoint], env=env,
            limits=self.limits, log=self.work_dir / f"log-{self.starts}.txt",
        )  # fmt: skip
        try:
            ready = _read_exactly(running.answers, len(READY), min(deadline, time.monotonic() + self.start_timeout_s))
        except TimeoutError:
            running.kill()
            raise ModelFailed(f"the open model did not load within {self.start_timeout_s:g} s") from None
        if ready != READY:
            raise ModelFailed(running.why_ended())
        self.start_s = time.perf_counter() - t0
        return running

    def next_logits(self, rows: list[list[int]], deadline: float | None = None) -> torch.Tensor:
        """(B, vocab) float32 logits of the position after each row (B rows of equal length)."""
        deadline = deadline if deadline is not None else time.monotonic() + self.start_timeout_s
        ids = torch.tensor(rows, dtype=torch.int64)  # (B, T)
        B, T = ids.shape
        with self._lock:
            running = self._ensure(deadline)
            try:
                _write_all(running.requests, HEADER.pack(B, T) + ids.numpy().tobytes(), deadline)
                answer = _read_exactly(running.answers, B * self.vocab_size * 4, deadline)
            except TimeoutError:
                running.kill()
                raise
            except OSError:  # the pipe broke: the process is gone
                answer = None
            if answer is None:
                raise ModelFailed(running.why_ended() + "; the next request starts it again")
        logits = torch.frombuffer(bytearray(answer), dtype=torch.float32).view(B, self.vocab_size)
        if not torch.isfinite(logits).all():
            raise ModelFailed("the open model gave non-finite logits")
        return logits

    def close(self) -> None:
        with self._lock:
            if self._running is not None:
                self._running.kill()
                self._running = None


class SandboxedEngine:
    """baseline.engine.Engine's generate() over a ModelProcess: the model gives logits, this side samples."""

    def __init__(self, process: ModelProcess, tokenizer, sequence_len: int):
        self.process, self.tokenizer, self.sequence_len = process, tokenizer, sequence_len
        self.stop_ids = frozenset(tokenizer.encode_special(name) for name in STOP_TOKENS)
        self._lock = threading.Lock()
        self._active, self._retired = 0, False

    def generate(
        self,
        tokens: list[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
        deadline: float | None = None,
    ):
        """Yield one new token id per row per step, as Engine.generate (rows that stopped keep going)."""
        assert tokens and all(isinstance(t, int) for t in tokens), "expected a non-empty list of token ids"
        if max_tokens is None:
            max_tokens = max(1, self.sequence_len - len(tokens))
        if len(tokens) + max_tokens > self.sequence_len:
            raise ValueError(
                f"prompt ({len(tokens)}) + max_tokens ({max_tokens}) is over the model's {self.sequence_len} positions"
            )
        with self._lock:
            self._active += 1
        try:
            rng = torch.Generator().manual_seed(seed) if temperature > 0 else None
            logits = self.process.next_logits([tokens], deadline).expand(num_samples, -1)  # the prompt once
            rows = [list(tokens) for _ in range(num_samples)]
            completed = [False] * num_samples
            for step in range(max_tokens):
                column = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()
                completed = [done or tok in self.stop_ids for done, tok in zip(completed, column, strict=True)]
                yield column
                if all(completed) or step == max_tokens - 1:
                    return
                for row, tok in zip(rows, column, strict=True):
                    row.append(tok)
                logits = self.process.next_logits(rows, deadline)  # the whole context again: no KV cache
        finally:
            with self._lock:
                self._active -= 1
                last = self._retired and self._active == 0
            if last:
                self.process.close()

    def retire(self) -> None:
        """Close the process once the generations running on it end (a swapped-out model)."""
        with self._lock:
            self._retired = True
            idle = self._active == 0
        if idle:
            self.process.close()

    def close(self) -> None:
        self.process.close()


def serve(source: Path, checkpoint: Path, requests, out) -> int:
    """The sandboxed side: load the model, say READY, then answer each request with its last logits."""
    runtime = init_runtime("cpu")
    try:
        try:
            model, meta = load_open_model(source, checkpoint, runtime.device, runtime.compute_dtype)
        except Exception as e:  # noqa: BLE001 -- the model's own failure, told as one line
            print(f"{INVALID}the model could not be built from its source and checkpoint: {type(e).__name__}: {e}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_INVALID
        vocab_size = meta["model_config"]["vocab_size"]
        out.write(READY)
        out.flush()
        while header := requests.read(HEADER.size):
            B, T = HEADER.unpack(header)
            idx = torch.frombuffer(bytearray(requests.read(B * T * 8)), dtype=torch.int64).view(B, T)
            with torch.no_grad():
                logits = model(idx)
            problem = logits_problem(logits, (B, T, vocab_size))
            if problem:
                print(f"{INVALID}{problem}", file=sys.stderr)
                return EXIT_INVALID
            out.write(memoryview(logits[:, -1].contiguous().numpy()).cast("B"))
            out.flush()
    finally:
        destroy_runtime()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.open_generation", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the submission's folder or .py file")
    parser.add_argument("--checkpoint", type=Path, required=True, help="an open checkpoint (meta.json, safetensors)")
    args = parser.parse_args(argv)
    requests = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")  # the logits' pipe; whatever the model prints goes to the log instead
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(args.source, args.checkpoint, requests, out)


if __name__ == "__main__":
    sys.exit(main())
