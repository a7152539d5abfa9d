"""The frozen training loop: nanochat's base_train, one process or many (`torchrun`), CPU or CUDA.

Run it through the CLI: `speedrun train --depth 4 --data-dir ../shared/data/pretrain --tokenizer DIR`
(or `torchrun --nproc_per_node=N -m speedrun train ...`). Everything a plug-in may change comes
in through `baseline.hooks.Hooks`; nothing here needs editing for a submission.

Timing follows nanochat (fact sheet §8): a step's dt runs from a device synchronize before its first
micro-step to one after `loss.item()`, and includes fetching the next batch, the schedule update and
the optimizer step (all communication included). Which steps count is protocol/timing.py's rule;
val-bpb evals, checkpoints, logging and set-up are outside every dt and reported separately. Each
step's dt is the MAX over ranks, so every rank reports the same seconds.
"""

import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from baseline.checkpoint import (
    latest_checkpoint,
    load_optimizer_state,
    load_state_into,
    load_weights,
    read_meta,
    save_checkpoint,
)
from baseline.config import TrainConfig, plan_training
from baseline.device import Runtime, max_across_ranks, peak_flops, sum_across_ranks, synchronize
from baseline.fp8 import convert_to_fp8, disabled_fp8
from baseline.hooks import Hooks, apply_schedule
from baseline.loader import bos_bestfit_batches
from baseline.tokenizer import Tokenizer
from protocol.events import (
    CheckpointEvent,
    CheckpointStartEvent,
    DivergedEvent,
    EndEvent,
    StartEvent,
    StepEvent,
    ValEvent,
    drop_from_step,
)
from protocol.hashing import ALL_FILES, NOT_CONTENT, file_sha256, tree_hash
from protocol.timing import NANOCHAT_UNTIMED_STEPS

EMA_BETA = 0.9  # smoothing of the logged train loss (debiased), as nanochat logs it


@dataclass
class TrainResult:
    status: str  # "completed" | "stopped" (stop_after_step reached) | "diverged" | "preempted" (saved, resumable)
    step: int  # optimizer steps taken
    num_iterations: int  # the planned horizon (on a fixed-budget track: the cap)
    train_time_s: float  # the timed seconds: Σ dt over every step (protocol/timing.py)
    nanochat_time_s: float = 0.0  # Σ dt over steps > 10, nanochat's figure
    setup_time_s: float = 0.0
    eval_time_s: float = 0.0
    checkpoint_time_s: float = 0.0
    wall_time_s: float = 0.0
    final_loss: float = float("nan")
    val_bpb: float | None = None
    min_val_bpb: float | None = None
    tokens_per_s: float = 0.0  # median of steady-state steps
    mfu: float = 0.0
    checkpoint: str | None = None
    val_bpb_history: list = field(default_factory=list)


class EventLog:
    """Typed events (protocol/events.py), one per line; only rank 0 writes.

    Into `stream` when given (under `speedrun run`, the runner's pipe: the runner stamps each line and
    owns events.jsonl), else appended to `path`; a resumed run first drops the events of the steps it
    will run again, so every step appears once.
    """

    def __init__(self, path: Path | None, resume_step: int = 0, stream=None):
        if stream is None and path and resume_step:
            drop_from_step(path, resume_step)
        self.file = stream if stream is not None else open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def write(self, kind, **fields):
        if self.file:
            # Wall-clock time lets telemetry samples be matched to the timed region.
            self.file.write(kind(wall=time.time(), **fields).line())
            self.file.flush()

    def close(self):
        if self.file:
            self.file.close()


def train(
    config: TrainConfig,
    runtime: Runtime,
    *,
    data_dir: str | Path,
    tokenizer_dir: str | Path | None,
    out_dir: str | Path,
    hooks: Hooks | None = None,
    resume: bool = False,
    stop_after_step: int | None = None,
    val_bpb_fn: Callable[[torch.nn.Module, int], float] | None = None,
    batches: Callable[[dict | None], Iterator] | None = None,
    log: Callable[[str], None] = print,
    events_stream=None,
    on_step_end: Callable[[int], None] | None = None,
    keep_final_checkpoint: bool = True,
    should_stop: Callable[[], bool] | None = None,
    save_every_s: float | None = None,
    checkpoint_meta: dict | None = None,
) -> TrainResult:
    """Train from scratch (or resume from the latest checkpoint in out_dir/checkpoints) and return the result.

    val_bpb_fn(model, step) -> bpb is called every `eval_every` steps and at the end (untimed); the
    harness supplies the frozen eval. stop_after_step ends the run early without changing the
    schedule (smoke runs, resume tests). batches(resume_state) replaces the frozen data loader
    (tests and benchmarks only: it must yield (inputs, targets, state) like the loader; with it,
    tokenizer_dir may be None and config.vocab_size is used). events_stream: an open text stream for the
    events instead of out_dir/events.jsonl (the runner's pipe). on_step_end(step): called at every step
    boundary, after the step's event is written (the harness's checks of the rules; it may raise).
    keep_final_checkpoint=False: no checkpoint when stop_after_step ends the run (a warm-up's throwaway).
    should_stop(): asked at every step boundary (a preemption notice: SIGTERM/SIGUSR1 in the harness);
    when any rank says yes, the run saves a checkpoint there and ends "preempted", to be resumed.
    save_every_s: also save at the first step boundary after this many wall seconds since the last save.
    checkpoint_meta: more keys for every checkpoint's meta.json (an open-division run names its division and
    its submission's hash: the checkpoint's model is that code's, not the baseline's).
    """
    wall_start = time.perf_counter()
    hooks = hooks or Hooks()
    out_dir = Path(out_dir)
    checkpoints_dir = out_dir / "checkpoints"
    master = runtime.is_master
    device = runtime.device
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    say = log if master else (lambda _msg: None)

    if tokenizer_dir is None and batches is None:
        raise ValueError("no tokenizer: pass --tokenizer DIR (write one with `speedrun tokenizer train`)")
    tokenizer = Tokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    # Checkpoints name their tokenizer by content, never by a path of this machine.
    tokenizer_hash = tree_hash(tokenizer_dir, include=ALL_FILES, exclude=NOT_CONTENT) if tokenizer else None
    if tokenizer is not None and config.vocab_size != tokenizer.vocab_size:
        config = TrainConfig(**{**asdict(config), "vocab_size": tokenizer.vocab_size})
    plan = plan_training(config, runtime.world_size)
    model = hooks.model(plan, device, runtime.compute_dtype)  # the baseline GPT, or an open submission's own
    if config.fp8:
        if device.type != "cuda":
            raise ValueError("--fp8 needs a CUDA GPU with fp8 support (sm89+); drop --fp8 on this machine")
        convert_to_fp8(model)  # same weights, fp8 matmuls; the optimizer sees the same parameters
    optimizer = hooks.build_optimizer(model, plan, runtime.compute_dtype)
    schedule = hooks.build_schedule(plan)

    start_step, loop_state, loader_state, resumed_from = 0, {}, None, None
    if resume and (ckpt := latest_checkpoint(checkpoints_dir)) is not None:
        resumed_from = ckpt
        meta = read_meta(ckpt)
        if meta["model_config"] != plan.model_config.to_dict():
            raise ValueError(f"{ckpt} holds a different model ({meta['model_config']}): resume with its config")
        load_state_into(model, load_weights(ckpt))
        load_optimizer_state(ckpt, optimizer, runtime.rank)
        start_step, loop_state = meta["step"], meta["loop_state"]
        loader_state = meta["loader_state"][runtime.rank]
        say(f"resuming from {ckpt} at step {start_step}")

    compile_model = config.compile if config.compile is not None else device.type == "cuda"
    step_model = torch.compile(model, dynamic=False) if compile_model else model
    if batches is not None:
        loader = batches(loader_state)
    else:
        loader = bos_bestfit_batches(
            tokenizer,
            config.device_batch_size,
            config.max_seq_len,
            "train",
            data_dir,
            rank=runtime.rank,
            world_size=runtime.world_size,
            device=device,
            resume_state=loader_state,
        )
    x, y, loader_state = next(loader)  # untimed, like nanochat's first fetch

    events = EventLog(out_dir / "events.jsonl" if master else None, start_step, events_stream if master else None)
    num_iterations, grad_accum = plan.num_iterations, plan.grad_accum_steps
    batch_tokens = plan.total_batch_size
    flops_per_step = plan.flops_per_token * batch_tokens
    peak = peak_flops(device) * runtime.world_size
    result = TrainResult(
        status="completed",
        step=start_step,
        num_iterations=num_iterations,
        train_time_s=loop_state.get("train_time_s", 0.0),
        nanochat_time_s=loop_state.get("nanochat_time_s", 0.0),
        min_val_bpb=loop_state.get("min_val_bpb"),
    )
    smooth_loss = loop_state.get("smooth_loss", 0.0)
    steady_tokens_per_s = []
    result.setup_time_s = time.perf_counter() - wall_start
    say(
        f"training d{config.depth}: {plan.model_config.n_embd} wide, {num_iterations} steps of {batch_tokens:,} "
        f"tokens ({grad_accum} micro-steps x {runtime.world_size} ranks), {plan.flops_per_token:.3e} FLOPs/token"
    )

    def save(step: int):
        events.write(CheckpointStartEvent, step=step)
        t0 = time.perf_counter()
        meta = {
            "model_config": plan.model_config.to_dict(),  # the shape dials an open model was built from, too
            **(checkpoint_meta or {}),
            "tokenizer_hash": tokenizer_hash,
            "train_config": asdict(config),
            "plan": plan.to_dict(),
            "loader_state": _gather_states(loader_state, runtime),
            "loop_state": {
                "train_time_s": result.train_time_s,
                "nanochat_time_s": result.nanochat_time_s,
                "smooth_loss": smooth_loss,
                "min_val_bpb": result.min_val_bpb,
            },
            "val_bpb": result.val_bpb,
        }
        path = save_checkpoint(checkpoints_dir, step, model, optimizer, meta, runtime.rank)
        result.checkpoint = str(path)
        seconds = time.perf_counter() - t0
        result.checkpoint_time_s += seconds
        sha256 = file_sha256(path / "model.safetensors") if master else None
        events.write(CheckpointEvent, step=step, seconds=seconds, sha256=sha256)

    step, last_save = start_step, time.monotonic()
    while True:
        # A fixed-budget track ends at the first step boundary past its budget (num_iterations is then a cap).
        last = step == num_iterations or 0 < config.time_budget_s <= result.train_time_s
        # Every rank takes the same decision at the same boundary (a notice may reach one rank first).
        preempted = not last and step != start_step and _any_rank(should_stop is not None and should_stop(), device)
        due = save_every_s is not None and time.monotonic() - last_save >= save_every_s
        timely = not last and step != start_step and _any_rank(due, device)
        if val_bpb_fn is not None and (last or (config.eval_every > 0 and step % config.eval_every == 0)):
            t0 = time.perf_counter()
            model.eval()
            with torch.no_grad(), disabled_fp8(model):  # evaluate in the compute dtype, as nanochat does
                bpb = val_bpb_fn(step_model, step)
            model.train()
            result.val_bpb = bpb
            result.min_val_bpb = bpb if result.min_val_bpb is None else min(result.min_val_bpb, bpb)
            result.val_bpb_history.append((step, bpb))
            events.write(ValEvent, step=step, val_bpb=bpb)
            say(f"step {step:05d} | val bpb {bpb:.6f}")
            result.eval_time_s += time.perf_counter() - t0
        save_now = step != start_step and (last or (config.save_every > 0 and step % config.save_every == 0))
        if save_now or preempted or timely:
            save(step)
            last_save = time.monotonic()
        if preempted:
            result.status = "preempted"
            say(f"preempted at step {step}: saved, resume to continue")
            break
        if last and step == start_step and resumed_from is not None:
            result.checkpoint = str(resumed_from)  # resumed after the last step: its checkpoint is the final one
        if last or (stop_after_step is not None and step >= stop_after_step):
            if not last:
                result.status = "stopped"
                if not save_now and keep_final_checkpoint:
                    save(step)
            break

        # ---------------------------------------------------------------- one timed step
        if step == start_step:
            events.write(StartEvent, step=step)  # the runner's clock starts here too
        synchronize(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for _ in range(grad_accum):
            loss = step_model(x, y)
            loss_sum += loss.detach()
            (loss / grad_accum).backward()
            x, y, loader_state = next(loader)
        progress = result.train_time_s / config.time_budget_s if config.time_budget_s > 0 else step / num_iterations
        lrm = apply_schedule(optimizer, schedule, step, progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss_sum.item() / grad_accum
        synchronize(device)
        dt = max_across_ranks(time.perf_counter() - t0, device)
        # The logged loss is the mean over the whole step's batch, every micro-step of every rank
        # (nanochat logs rank 0's last micro-step); averaged after the clock stopped.
        loss_value = sum_across_ranks(loss_value, device) / runtime.world_size
        # ----------------------------------------------------------------

        result.train_time_s += dt  # every step is timed (protocol/timing.py)
        if step >= NANOCHAT_UNTIMED_STEPS:
            result.nanochat_time_s += dt
        smooth_loss = EMA_BETA * smooth_loss + (1 - EMA_BETA) * loss_value
        debiased = smooth_loss / (1 - EMA_BETA ** (step + 1))
        tokens_per_s = batch_tokens / dt
        mfu = 100 * flops_per_step / dt / peak
        if step >= NANOCHAT_UNTIMED_STEPS or num_iterations <= NANOCHAT_UNTIMED_STEPS:
            steady_tokens_per_s.append(tokens_per_s)  # the throughput figure: past compile warm-up
        events.write(
            StepEvent,
            step=step,
            loss=loss_value,
            smooth_loss=debiased,
            lr_multiplier=lrm,
            dt_s=dt,
            tokens_per_s=tokens_per_s,
            mfu=mfu,
            train_time_s=result.train_time_s,
        )
        say(
            f"step {step:05d}/{num_iterations} | loss {debiased:.6f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms "
            f"| tok/s {tokens_per_s:,.0f} | mfu {mfu:.2f} | time {result.train_time_s / 60:.2f}m"
        )
        step += 1
        result.step, result.final_loss = step, loss_value
        if on_step_end is not None:
            on_step_end(step)
        if not math.isfinite(loss_value):
            result.status = "diverged"
            say(f"loss is {loss_value} at step {step - 1}: the run diverged, stopping")
            events.write(DivergedEvent, step=step - 1, loss=loss_value)
            break
        # Python's GC walks every tensor; nanochat freezes it after the first step and collects rarely.
        if step == 1:
            gc.collect()
            gc.freeze()
            gc.disable()
        elif step % 5000 == 0:
            gc.collect()

    gc.enable()
    if steady_tokens_per_s:
        steady_tokens_per_s.sort()
        result.tokens_per_s = steady_tokens_per_s[len(steady_tokens_per_s) // 2]
        result.mfu = 100 * result.tokens_per_s * plan.flops_per_token / peak
    result.wall_time_s = time.perf_counter() - wall_start
    events.write(EndEvent, **{k: v for k, v in asdict(result).items() if k != "val_bpb_history"})
    events.close()
    return result


def _any_rank(flag: bool, device: torch.device) -> bool:
    return max_across_ranks(float(flag), device) > 0


def _gather_states(state: dict, runtime: Runtime) -> list[dict]:
    """Every rank's loader state, so each rank resumes its own shard of the stream."""
    if not runtime.is_distributed:
        return [state]
    states = [None] * runtime.world_size
    dist.all_gather_object(states, state)
    return states
