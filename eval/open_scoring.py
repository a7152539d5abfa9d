"""Score an open-division model from outside its process: the model runs in the sandbox and returns logits only.

    from eval.open_scoring import score_in_sandbox
    result = score_in_sandbox(source=DIR, checkpoint=DIR, tokenizer_dir=DIR, val_dir=DIR, tokens=N, batch_size=B,
                              work_dir=DIR, heldout_dir=DIR)       # what the leaderboard calls; runs no model code here

    python -m eval.open_scoring --source DIR --checkpoint DIR --inputs FILE    # the sandboxed side (stdout: logits)

This process (frozen code, trusted) reads the val batches, chooses every input the model sees and computes
every number from the logits it gets back: the cross-entropy with eval/bpb.py's loop (so the same bpb as
harness/open_eval.py to the bit), the checks, the held-out bpb. The model process, started in a bubblewrap
sandbox (sandbox/bwrap.py: no network, no host files but the project, the source and the checkpoint
read-only, no val data, no tokenizer), gets a file of input batches (int64, safetensors) and writes back,
for each, float32 logits (B, T, vocab_size) as raw bytes on a pipe; this side reads exactly that many bytes
per batch, so the model can return logits and nothing else: whatever it prints or writes, no score it
makes up reaches the result. Two passes, each a fresh process that cannot remember the other:
- A: the val batches in order, then the held-out batches: val bpb, per-batch nats, held-out bpb;
- B: the val batches in reverse order, the second half of every row replaced by another row's second half
  (a real continuation, just not this row's): each token of the first halves must score as in A
  (CAUSAL_NATS_ATOL). A model that sees later tokens of its row, learns or keeps a cache while it is
  scored, or is not deterministic, scores them differently, on every batch, not only on a probe.
What this cannot see: a model that behaves well on exactly these inputs and differently elsewhere (the
metric is what it does here), and the memory and time it takes are the sandbox's limits, not checks.
The logits cross a pipe in float32: B·T·vocab·4 bytes a batch (cpu-books: 8×512×8192×4 = 128 MiB), held
one batch at a time; GPUs are not passed into sandboxes yet, so this scores on the CPU.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from baseline.checkpoint import read_meta
from baseline.device import destroy_runtime, init_runtime
from baseline.loader import bos_bestfit_batches
from baseline.tokenizer import Tokenizer
from eval.bpb import bpb_steps, evaluate_bpb
from eval.open_model import ScoredByLogits, load_open_model, logits_problem
from protocol.record import EXIT_INVALID, EXIT_OK
from sandbox import Limits
from sandbox import run as run_sandboxed

INPUTS_FILE = "inputs.safetensors"  # in a pass's work dir: {"inputs": (N, B, T) int64}
CAUSAL_NATS_ATOL = 1e-3  # a first-half token's nats in the two passes: float noise apart (fp32), units for a peek
INVALID = "speedrun: invalid: "


class ModelProblem(Exception):
    """The model broke a rule or could not give its logits (the bundle's fault): one line, the run is rejected."""


class Streamed(nn.Module):
    """Plays the model for eval/bpb.py: each call returns the next logits the sandboxed model wrote, checked
    to be for the batch this side sent."""

    def __init__(self, stream, sent: torch.Tensor):
        super().__init__()
        self.device_anchor = nn.Parameter(torch.zeros(0))  # evaluate_bpb reads the device off a parameter
        self.stream, self.sent, self.k = stream, sent, 0

    def forward(self, idx):
        assert torch.equal(idx, self.sent[self.k]), "the scorer must score the batches in the order it sent them"
        self.k += 1
        return next(self.stream)


def _read_exactly(pipe, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = pipe.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    return lines[-1][:300] if lines else "no output"


class SandboxedPass:
    """One model process: `python -m eval.open_scoring` in the sandbox over `inputs`; iterate for its logits."""

    def __init__(self, inputs: torch.Tensor, vocab_size: int, *, source: Path, checkpoint: Path, work_dir: Path,
                 threads: int, limits: Limits, tick):  # fmt: skip
        work_dir.mkdir(parents=True)
        save_file({"inputs": inputs.contiguous()}, work_dir / INPUTS_FILE)
        self.shape, self.vocab_size, self.log = (*inputs.shape, vocab_size), vocab_size, work_dir / "log.txt"
        self.stop, self.ran = threading.Event(), None
        repo = Path(__file__).resolve().parents[1]
        args = ["--source", source, "--checkpoint", checkpoint, "--inputs", work_dir / INPUTS_FILE]
        cmd = [sys.executable, "-m", "eval.open_scoring", *map(str, args)]
        env = {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(threads), "PYTHONDONTWRITEBYTECODE": "1"}
        read, write = os.pipe()
        self.pipe = open(read, "rb", buffering=0)  # noqa: SIM115 -- closed in close()

        def run() -> None:
            try:
                with open(self.log, "wb") as log:
                    self.ran = run_sandboxed(
                        cmd, work_dir=work_dir, read_only=[repo, source, checkpoint], env=env, limits=limits,
                        cwd=work_dir, stdout=write, stderr=log, tick=lambda: not self.stop.is_set() and tick(),
                        tick_s=1.0,
                    )  # fmt: skip
            finally:
                os.close(write)  # the reader sees the end once the sandbox is gone

        self.thread = threading.Thread(target=run, name="open-model-sandbox", daemon=True)
        self.thread.start()

    def __iter__(self):
        n, B, T, V = self.shape
        for k in range(n):
            buf = _read_exactly(self.pipe, B * T * V * 4)
            if buf is None:
                self.close()
                raise self.ended(f"before the logits of batch {k} of {n}")
            yield torch.frombuffer(buf, dtype=torch.float32).view(B, T, V)

    def ended(self, when: str) -> Exception:
        """Why the model process stopped: ModelProblem (the model's fault), RuntimeError (limits, the server's)."""
        status = self.ran.status if self.ran else "not started"
        last = _tail(self.log)
        if last.startswith(INVALID):
            return ModelProblem(last.removeprefix(INVALID))
        if status in ("failed", "ok", "processes", "disk"):
            return ModelProblem(f"the model's process ended {status} {when}: {last}")
        return RuntimeError(f"the open model's sandbox ended {status} {when}: {self.ran.reason if self.ran else last}")

    def close(self) -> None:
        self.stop.set()  # a sandbox still running (this side stopped reading) is killed within a second
        self.pipe.close()
        self.thread.join()


def _batches(tokenizer: Tokenizer, data_dir: Path, steps: int, batch_size: int, seq_len: int) -> list:
    loader = bos_bestfit_batches(tokenizer, batch_size, seq_len, "val", data_dir, device="cpu")
    return [next(loader)[:2] for _ in range(steps)]


def swap_second_halves(inputs: torch.Tensor) -> torch.Tensor:
    """(B, T) rows whose second halves are the next row's (a single row's: reversed): the first halves stay."""
    half = inputs.size(1) // 2
    probe = inputs.clone()
    probe[:, half:] = inputs.roll(1, 0)[:, half:] if inputs.size(0) > 1 else inputs[:, half:].flip(1)
    return probe


def _first_half_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    half = targets.size(1) // 2
    V = logits.size(-1)
    return nn.functional.cross_entropy(
        logits[:, :half].reshape(-1, V), targets[:, :half].reshape(-1), ignore_index=-1, reduction="none"
    )


def score_in_sandbox(
    *,
    source: Path,
    checkpoint: Path,
    tokenizer_dir: Path,
    val_dir: Path,
    tokens: int,
    batch_size: int,
    work_dir: Path,
    heldout_dir: Path | None = None,
    threads: int = 2,
    limits: Limits | None = None,
    tick=lambda: True,
) -> dict:
    """val bpb (and held-out bpb) of an open checkpoint, its model run only in the sandbox; see the docstring.

    The result's `problem` is one line when the model broke a rule or could not give its logits (reject the
    run); RuntimeError (one line) when the sandbox could not finish for the server's reasons (its limits, a
    cancel): the logs are under work_dir/pass-*/log.txt. `tick()` returning False cancels it.
    """
    t0 = time.perf_counter()
    tokenizer = Tokenizer.load(tokenizer_dir)
    seq_len = read_meta(checkpoint)["model_config"]["sequence_len"]  # held to the track at upload
    steps = bpb_steps(tokens, batch_size, seq_len, 1)
    val = _batches(tokenizer, val_dir, steps, batch_size, seq_len)
    heldout = _batches(tokenizer, heldout_dir, steps, batch_size, seq_len) if heldout_dir else []
    token_bytes, V = tokenizer.token_bytes(), tokenizer.vocab_size
    common = dict(source=Path(source), checkpoint=Path(checkpoint), threads=threads, limits=limits or Limits(),
                  tick=tick)  # fmt: skip
    result = {"tokens": steps * batch_size * seq_len, "batch_size": batch_size, "seq_len": seq_len}
    forward, first_halves, heldout_result = [], [], None
    sent_a = torch.stack([x for x, _ in val + heldout])
    pass_a = SandboxedPass(sent_a, V, work_dir=work_dir / "pass-a", **common)
    try:
        stream = iter(pass_a)

        def kept(logits_iter):  # pass A's first-half nats, to compare with pass B's
            for (_, y), logits in zip(val, logits_iter, strict=False):
                first_halves.append(_first_half_nats(logits, y))
                yield logits

        scorer = ScoredByLogits(Streamed(kept(stream), sent_a), V)
        result |= evaluate_bpb(scorer, val, token_bytes, steps, per_batch=forward)
        if heldout:
            scorer = ScoredByLogits(Streamed(stream, sent_a[steps:]), V)
            heldout_result = evaluate_bpb(scorer, heldout, token_bytes, steps)
        sent_b = torch.stack([swap_second_halves(x) for x, _ in val[::-1]])
        pass_b = SandboxedPass(sent_b, V, work_dir=work_dir / "pass-b", **common)
        try:
            for k, logits in zip(range(steps - 1, -1, -1), pass_b, strict=True):
                problem = causal_order_problem(k, first_halves[k], _first_half_nats(logits, val[k][1]))
                if problem:
                    raise ModelProblem(problem)
        finally:
            pass_b.close()
    except ModelProblem as e:
        result |= {"bpb": None, "problem": str(e)}
    else:
        result["problem"] = None
    finally:
        pass_a.close()
    return {**result, "batch_nats": forward, "heldout": heldout_result, "seconds": time.perf_counter() - t0}


def causal_order_problem(k: int, first: torch.Tensor, again: torch.Tensor) -> str | None:
    """One line when val batch k's first-half tokens score differently in the two passes."""
    diff = (first - again).abs().max().item() if first.numel() else 0.0
    if not diff <= CAUSAL_NATS_ATOL:  # also NaN
        return (
            f"val batch {k}'s first halves score up to {diff:.3g} nats apart in two passes (the second in reverse "
            "order, other tokens after them): the model sees later tokens of its row, learns or caches during the "
            "eval, or is not deterministic"
        )
    return None


def serve_logits(source: Path, checkpoint: Path, inputs: Path, out) -> int:
    """The sandboxed side: the model's logits of every input batch, float32 bytes on `out`, in order."""
    runtime = init_runtime("cpu")
    try:
        try:
            model, meta = load_open_model(source, checkpoint, runtime.device, runtime.compute_dtype)
        except Exception as e:  # noqa: BLE001 -- the model's own failure, told as one line
            print(f"{INVALID}the model could not be built from its source and checkpoint: {type(e).__name__}: {e}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_INVALID
        vocab_size = meta["model_config"]["vocab_size"]
        batches = load_file(inputs)["inputs"]
        with torch.no_grad():
            for idx in batches:
                logits = model(idx)
                problem = logits_problem(logits, (*idx.shape, vocab_size))
                if problem:
                    print(f"{INVALID}{problem}", file=sys.stderr)
                    return EXIT_INVALID
                out.write(memoryview(logits.contiguous().numpy()).cast("B"))
        out.flush()
    finally:
        destroy_runtime()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.open_scoring", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the submission's folder or .py file")
    parser.add_argument("--checkpoint", type=Path, required=True, help="an open checkpoint (meta.json, safetensors)")
    parser.add_argument("--inputs", type=Path, required=True, help=f"the batches to score ({INPUTS_FILE})")
    args = parser.parse_args(argv)
    out = os.fdopen(os.dup(1), "wb")  # the logits' pipe; whatever the model prints goes to the log instead
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve_logits(args.source, args.checkpoint, args.inputs, out)


if __name__ == "__main__":
    sys.exit(main())
