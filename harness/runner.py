"""`speedrun run`: launch the frozen trainer with a submission for each registered seed, record everything.

    speedrun run baseline --track cpu-books --seeds 3
    speedrun run my_optimizer --track gpt2 --nproc 8 --seeds 5

harness/campaign.py registers the campaign: checks, data, tokenizer, and one run directory per seed with
its `run.json`, first `record.json` and `source.tar`. For each run the runner marks the record
"running", launches `harness.trainer_process` as a child process (through torchrun when --nproc > 1)
while it samples telemetry, shows a live progress line from the step events, and forwards
SIGINT/SIGTERM. An open-division run trains from its own copy of the source (`source/`) and its eval is
harness/open_eval.py. Whatever happens, the record is rewritten at the end with the final status
(completed, stopped, failed, diverged, killed), timings, result, telemetry summary and provenance; logs,
events and telemetry stay on disk. `speedrun resume RUN_ID` continues a run from its last checkpoint
with the timer continuing (spot instances).
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from baseline.checkpoint import latest_checkpoint, read_meta, step_dir
from harness import telemetry
from harness.campaign import register
from harness.eval_process import read_evaluation
from harness.event_pipe import EventPipe
from harness.trackers import Tracker, open_tracker, require
from harness.trainer_process import EVENTS_PIPE_ENV, read_result
from protocol.events import CheckpointEvent, StartEvent, StepEvent, drop_from_step, read_events
from protocol.hashing import file_sha256
from protocol.paths import REPO
from protocol.record import (
    EXIT_DIVERGED,
    EXIT_INVALID,
    Campaign,
    Clock,
    Interruption,
    Result,
    RunRecord,
    RunSpec,
    TelemetrySummary,
    Throughput,
    Timing,
    now_iso,
    read_record,
    read_spec,
    write_record,
    write_spec,
)
from protocol.timing import clock_check, last_per_step, nanochat_seconds, timed_seconds
from protocol.tracks import Track, beats

KILL_GRACE_S = 30
PREEMPT_GRACE_S = 300  # how long a preempted training process may take to reach a step boundary and save
COMPILE_CACHE = "compile_cache"  # in the run directory: filled by the warm-up, read by the timed process


# ---------------------------------------------------------------------------------------- one run


def _launch(module: str, args: list[str], run_dir: Path, env: dict, nproc: int, nnodes: int, node_rank: int,
            rdzv: str | None) -> subprocess.Popen:  # fmt: skip
    """`python -m module args` (through torchrun when several ranks), its output appended to train.log.

    Several nodes meet at `rdzv` (HOST:PORT of node 0) with fixed node ranks (torchrun's static
    rendezvous): node 0 must hold global rank 0, which writes the step events into node 0's runner's
    pipe; c10d's rendezvous would hand rank 0 to whichever node sorts first.
    """
    if nproc == 1 and nnodes == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
        if nnodes > 1:
            host, _, port = rdzv.rpartition(":")
            cmd += [f"--node_rank={node_rank}", f"--master_addr={host}", f"--master_port={port}"]
        else:
            cmd += ["--standalone"]
        cmd += ["-m", module, *args]
    with open(run_dir / "train.log", "a") as log:  # the child keeps its own descriptor
        # A new session: one signal reaches the process and every torchrun rank, never this one.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


class _Progress:
    """One line: step/total, loss, tok/s, MFU, timed seconds and ETA, from the step events as they arrive.
    On a budget track the timed seconds are what runs out (the step count is only a cap): step, then seconds
    of the budget, and the ETA is the budget's rest."""

    def __init__(self, total_steps: int, stream=None, budget_s: float | None = None):
        self.stream, self.total = stream or sys.stdout, total_steps  # looked up now: a caller may redirect it
        self.budget_s = budget_s
        self.tty = self.stream.isatty()
        self.last_print = 0.0
        self.last: StepEvent | None = None

    def update(self, event) -> None:
        if isinstance(event, StepEvent):
            self.last = event

    def show(self, final: bool = False) -> None:
        e, now = self.last, time.monotonic()
        if e is None or not (self.tty or final or now - self.last_print > 10):
            return
        self.last_print = now
        timed = e.train_time_s or 0
        if self.budget_s:
            step, of_budget, eta_s = f"step {e.step + 1}", f" of {self.budget_s:g}s", max(self.budget_s - timed, 0)
        else:
            step, of_budget, eta_s = f"step {e.step + 1}/{self.total}", "", (self.total - e.step - 1) * e.dt_s
        line = (
            f"{step} | loss {e.smooth_loss or float('nan'):.4f} | {e.tokens_per_s or 0:,.0f} tok/s | "
            f"MFU {e.mfu or 0:.1f}% | timed {timed:.1f}s{of_budget} | ETA {eta_s / 60:.1f} min"
        )
        print(
            ("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True
        )


def process_env(run_dir: Path, spec: RunSpec) -> dict:
    """The environment of the warm-up, training and eval processes: the track's threads, the run's own caches."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    if spec.cpu_threads:
        env["OMP_NUM_THREADS"] = str(spec.cpu_threads)
    # torch.compile's caches and every temporary file stay in the run directory: the warm-up fills the
    # caches the timed process reads, and nothing written there reaches another run.
    (run_dir / "tmp").mkdir(exist_ok=True)
    env |= {
        "TORCHINDUCTOR_CACHE_DIR": str(run_dir / COMPILE_CACHE),
        "TRITON_CACHE_DIR": str(run_dir / COMPILE_CACHE / "triton"),
        "TMPDIR": str(run_dir / "tmp"),
    }
    return env


@dataclass
class _Stages:
    """The stages of one launch: exit codes, the runner's seconds, and the signal that stopped them.

    SIGINT stops now (the run ends killed). SIGTERM and SIGUSR1 are the notice a cloud or SLURM gives
    before taking the machine: the training process is asked (SIGUSR1) to save at its next step boundary
    and end preempted; other stages just end. Under torchrun the notice goes to the ranks, not the agent.
    """

    signal: int | None = None
    returncode: dict = field(default_factory=dict)  # stage -> exit code
    seconds: dict = field(default_factory=dict)  # stage -> the runner's wall seconds
    proc: subprocess.Popen | None = None
    stage: str | None = None

    def forward(self, signum, _frame):
        first = self.signal is None
        self.signal = self.signal or signum
        if self.proc is None or self.proc.poll() is not None or not first:
            return
        if signum == signal.SIGINT or self.stage != "train":
            os.killpg(self.proc.pid, signal.SIGTERM)
            return
        ranks = psutil.Process(self.proc.pid).children() if self.proc.args[2] == "torch.distributed.run" else []
        for p in ranks or [psutil.Process(self.proc.pid)]:
            p.send_signal(signal.SIGUSR1)

    @property
    def preempted(self) -> bool:
        return self.signal in (signal.SIGTERM, signal.SIGUSR1)

    def run(self, stage: str, module: str, args: list[str], run_dir, env, launch, tick=lambda: None) -> int:
        t0 = time.monotonic()
        self.stage, self.proc = stage, _launch(module, args, run_dir, env, **launch)
        while self.proc.poll() is None:
            tick()
            time.sleep(0.2)
            if self.signal is not None:
                try:
                    self.proc.wait(PREEMPT_GRACE_S if self.preempted and stage == "train" else KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
        self.returncode[stage], self.seconds[stage] = self.proc.returncode, time.monotonic() - t0
        return self.proc.returncode


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def execute(
    run_dir: Path, record: RunRecord, *, nproc=1, nnodes=1, node_rank=0, rdzv=None, log_to: str | None = None
) -> RunRecord:
    """Warm up, train, evaluate (three processes), watching and stamping; return the finished record (also written).

    With several nodes this is node 0's runner; the others run `follow` with the same launch arguments.
    log_to: an experiment tracker (harness/trackers.py) that gets each step event as it is stamped, then the result.
    """
    spec = read_spec(run_dir)
    env, launch = process_env(run_dir, spec), dict(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv)
    stages = _Stages()
    progress = _Progress(record.plan["num_iterations"], budget_s=record.track.budget_s)
    tracker = _open_tracker(log_to, run_dir, record)
    on_event = progress.update if tracker is None else lambda e: (progress.update(e), tracker.log_event(e))
    events_path = run_dir / record.files.events
    old_handlers = {s: signal.signal(s, stages.forward) for s in SIGNALS}
    pipe = None
    record.status = "running"
    write_record(run_dir, record)
    try:
        with telemetry.TelemetrySampler(run_dir / _telemetry_file(record)) as sampler:
            if stages.run("warm-up", "harness.warmup", [str(run_dir)], run_dir, env, launch) == 0 and not stages.signal:
                if spec.resume and (ckpt := latest_checkpoint(run_dir / "checkpoints")) is not None:
                    drop_from_step(events_path, read_meta(ckpt)["step"])
                pipe = EventPipe(run_dir / "events.fifo", events_path, on_event=on_event)
                sampler.mark("train_start")
                train_env = env | {EVENTS_PIPE_ENV: str(pipe.path)}
                stages.run(
                    "train", "harness.trainer_process", [str(run_dir)], run_dir, train_env, launch, progress.show
                )
                sampler.mark("train_end")
                pipe.close()
                progress.show(final=True)
                pinned = _final_checkpoint(run_dir, read_events(events_path))
                result = read_result(run_dir)
                done = stages.returncode["train"] == 0 and result is not None and result.status != "preempted"
                if done and pinned and not stages.signal:  # on this node alone: the checkpoint it scores is here
                    module, args, on_node = "harness.eval_process", [str(run_dir), str(pinned[0]), pinned[1]], {}
                    if record.submission.division == "open":  # one process runs the copied model code
                        module, args, on_node = "harness.open_eval", [*args, record.submission.hash], {"nproc": 1}
                    stages.run("eval", module, args, run_dir, env, launch | {"nnodes": 1, "rdzv": None} | on_node)
        if sys.stdout.isatty():
            print()
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
    record = finish(run_dir, record, spec, stages, pipe)
    if tracker is not None:
        tracker.finish(_tracker_summary(record))
    return record


def _open_tracker(log_to: str | None, run_dir: Path, record: RunRecord) -> Tracker | None:
    if log_to is None:
        return None
    config = {**record.config, "track": record.track.name, "submission": record.submission.name,
              "seed": record.seed, "official": record.official}  # fmt: skip
    group = f"{record.track.name}-{record.submission.name}"  # the runs a tracker shows side by side
    try:
        return open_tracker(log_to, name=record.run_id, config=config, directory=run_dir, group=group)
    except Exception as e:  # noqa: BLE001 -- a tracker that cannot start must not cost the run: it runs untracked
        print(f"speedrun: warning: {log_to} could not start ({type(e).__name__}: {e}); the run goes on without it")
        return None


def _tracker_summary(record: RunRecord) -> dict:
    timing, result = record.timing, record.result
    return {
        "status": record.status,
        "official": record.official,
        "train_time_s": timing.train_time_s if timing else None,
        "wall_time_s": timing.wall_time_s if timing else None,
        result.metric: result.value,
        "val_bpb": result.val_bpb,
        "target_met": result.target_met,
    }


def follow(run_dir: Path, *, nproc: int, nnodes: int, node_rank: int, rdzv: str) -> int:
    """Another node of a multi-node run: the same three torchrun stages, joining node 0's rendezvous each time.

    It writes nothing of the run's own: node 0's runner stamps the events and writes the record.
    """
    spec = read_spec(run_dir)
    env, launch = process_env(run_dir, spec), dict(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv)
    stages = _Stages()
    old_handlers = {s: signal.signal(s, stages.forward) for s in SIGNALS}
    try:
        for stage, module in (("warm-up", "harness.warmup"), ("train", "harness.trainer_process")):
            if stages.run(stage, module, [str(run_dir)], run_dir, env, launch) != 0 or stages.signal:
                return 1
        return 0  # the eval runs on node 0 alone: the checkpoint it scores is there
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)


def _final_checkpoint(run_dir: Path, events: list) -> tuple[Path, str] | None:
    """(checkpoint dir, sha256) of the last checkpoint the training process reported, if its file still has that hash.

    The runner hashes the file itself right after the process exited: whatever ran after the report
    (an atexit hook, a thread) cannot have swapped the weights the eval will score.
    """
    saves = [e for e in events if isinstance(e, CheckpointEvent) and e.sha256]
    if not saves:
        return None
    path = step_dir(run_dir / "checkpoints", saves[-1].step)
    weights = path / "model.safetensors"
    return (path, saves[-1].sha256) if weights.is_file() and file_sha256(weights) == saves[-1].sha256 else None


def _timed_window(run_dir: Path) -> tuple[float | None, float | None]:
    """Wall-clock bounds of this launch's timed steps (from its start event to its last step), from the events."""
    path = run_dir / "events.jsonl"
    events = read_events(path) if path.is_file() else []
    starts = [i for i, e in enumerate(events) if isinstance(e, StartEvent)]
    launch = events[starts[-1] :] if starts else events
    steps = [e for e in launch if isinstance(e, StepEvent)]
    if not steps:
        return None, None
    return (launch[0].wall if starts else steps[0].wall - steps[0].dt_s), steps[-1].wall


def _telemetry_file(record: RunRecord) -> str:
    """Each launch samples into its own file (a resumed run restarts the clock): telemetry.jsonl, telemetry.1.jsonl."""
    return "telemetry.jsonl" if not record.resumed else f"telemetry.{record.resumed}.jsonl"


def _summarize_telemetry(run_dir: Path, spec: RunSpec, samples_path: Path) -> TelemetrySummary:
    """The summary over the timed steps this launch sampled (a resumed run: its last launch's share)."""
    samples = telemetry.read_samples(samples_path)
    walls = [s["wall"] for s in samples if s.get("kind") == "sample"]
    t0, t1 = _timed_window(run_dir)
    if walls and t0 is not None:
        t0, t1 = max(t0, walls[0]), min(t1, walls[-1])
    if t0 is None or not walls or t0 >= t1:
        t0 = t1 = None  # no timed step inside this launch's samples: summarize the whole launch
    summary = telemetry.summarize(
        samples, wall_start=t0, wall_end=t1, price_per_gpu_hour=spec.price_per_hour, gpu_count=spec.gpu_count
    )
    return TelemetrySummary(**summary, file=samples_path.name)


def _log_tail(run_dir: Path, n: int = 3) -> list[str]:
    log = run_dir / "train.log"
    return log.read_text(errors="replace").strip().splitlines()[-n:] if log.is_file() else []


def _outcome(run_dir: Path, stages: _Stages, pipe: EventPipe | None, result, clock) -> tuple[str, str | None]:
    """The run's status and, unless it succeeded, why (one line)."""
    tail = _log_tail(run_dir, 20)
    if stages.signal is not None:
        name = signal.Signals(stages.signal).name
        if stages.preempted and result is not None and result.status == "preempted":
            return "preempted", f"{name}: saved at step {result.step}; `speedrun resume {run_dir.name}` continues it"
        return "killed", f"stopped by {name}"
    if EXIT_INVALID in stages.returncode.values():
        return "invalid", next((line for line in reversed(tail) if "speedrun: invalid:" in line), "a rule was broken")
    for stage, code in stages.returncode.items():
        if code not in (0, EXIT_DIVERGED) or (stage == "train" and code == 0 and result is None):
            return "failed", f"the {stage} process exited with code {code}: " + " | ".join(tail[-3:])
    if stages.returncode.get("train") == EXIT_DIVERGED:
        return "diverged", None
    if pipe is not None and pipe.problems:
        return "invalid", f"the step events are not what the trainer writes: {pipe.problems[0]}"
    if clock is not None and not clock.ok:
        return "invalid", clock.detail
    if "eval" not in stages.returncode:
        return "invalid", "the final checkpoint is missing or changed after the training process reported it"
    return result.status, None


def finish(run_dir: Path, record: RunRecord, spec: RunSpec, stages: _Stages, pipe: EventPipe | None) -> RunRecord:
    """Fill the record from what the three processes left behind, whatever the outcome.

    The timed seconds come from the step events the runner stamped, so a run that was killed or
    preempted still reports the seconds it trained for.
    """
    result, evaluation = read_result(run_dir), read_evaluation(run_dir)
    events_path = run_dir / record.files.events
    events = read_events(events_path) if events_path.is_file() else []
    steps = last_per_step(events)
    clock = clock_check(events) if steps else None
    status, why = _outcome(run_dir, stages, pipe, result, clock)
    record.status, record.finished, record.error = status, now_iso(), why
    previous = record.timing
    if steps or result:
        record.timing = Timing(
            train_time_s=timed_seconds(events),
            nanochat_time_s=nanochat_seconds(events),
            warmup_time_s=stages.seconds.get("warm-up", 0.0) + (previous.warmup_time_s if previous else 0.0),
            setup_time_s=result.setup_time_s if result else 0.0,
            eval_time_s=stages.seconds.get("eval", 0.0),
            checkpoint_time_s=result.checkpoint_time_s if result else 0.0,
            wall_time_s=sum(stages.seconds.values()) + (previous.wall_time_s if previous else 0.0),
            steps=result.step if result else (steps[-1].step + 1 if steps else 0),
            num_iterations=record.plan["num_iterations"],
            clock=Clock(ok=clock.ok, runner_span_s=clock.runner_span_s, saves_s=clock.saves_s, detail=clock.detail)
            if clock
            else None,
        )
    if result:
        record.throughput = Throughput(tokens_per_s=result.tokens_per_s, mfu=result.mfu)
        record.files.checkpoint = os.path.relpath(result.checkpoint, run_dir) if result.checkpoint else None
    if status in ("preempted", "killed", "failed") and record.timing is not None:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        record.interruptions.append(
            Interruption(at=now_iso(), status=status, step=record.timing.steps,
                         checkpoint_step=read_meta(ckpt)["step"] if ckpt else None, timed_s=record.timing.train_time_s)
        )  # fmt: skip
    core = (evaluation.core or {}).get("core")
    value = evaluation.val_bpb if record.track.metric == "val_bpb" else core
    met = beats(value, record.track.threshold, record.track.higher_is_better)
    record.result = Result(
        metric=record.track.metric, value=value, val_bpb=evaluation.val_bpb, core=core, target_met=met
    )
    samples_path = run_dir / _telemetry_file(record)
    if samples_path.is_file():
        try:
            record.telemetry = _summarize_telemetry(run_dir, spec, samples_path)
        except Exception as e:  # noqa: BLE001 -- a telemetry problem must never cost the record
            record.telemetry = TelemetrySummary(error=f"{type(e).__name__}: {e}", file=samples_path.name)
    if status != "completed":
        record.official = False
        if f"status {status}" not in record.unofficial_reasons:
            record.unofficial_reasons.append(f"status {status}")
    write_record(run_dir, record)
    return record


def run(
    track: Track,
    submission: str,
    *,
    seeds: list[int],
    runs_dir: Path = Path("runs"),
    data_dir: Path | None = None,
    nproc: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv: str | None = None,
    max_steps: int | None = None,
    unofficial: bool = False,
    checkpoint_every_s: float | None = None,
    campaign_id: str | None = None,
    registrar: Callable[[Campaign], str] | None = None,
    log_to: str | None = None,
) -> list[Path]:
    """Register one run per seed (all before any starts), then run them in turn; returns the run directories."""
    if log_to is not None:
        require(log_to)  # a missing tracker says so before any data or training work
    _, run_dirs = register(track, submission, seeds=seeds, runs_dir=runs_dir, data_dir=data_dir, nproc=nproc * nnodes,
                           max_steps=max_steps, unofficial=unofficial, checkpoint_every_s=checkpoint_every_s,
                           campaign_id=campaign_id, registrar=registrar)  # fmt: skip
    for run_dir in run_dirs:
        record = execute(run_dir, read_record(run_dir), nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv,
                         log_to=log_to)  # fmt: skip
        timed_s, steps = (record.timing.train_time_s, record.timing.steps) if record.timing else (0.0, 0)
        # A budget track has no target to meet: what its steps reached in the budget is the result.
        reached = f"{steps} steps" if track.kind == "budget" else f"target met: {record.result.target_met}"
        print(
            f"run {record.run_id}: {record.status}, timed {timed_s:.1f}s, "
            f"{record.result.metric} {record.result.value}, {reached}" + (f" ({record.error})" if record.error else "")
        )
        if record.status == "killed":  # the others stay registered: `speedrun resume RUN_ID` runs them later
            break
    return run_dirs


def resume(run_dir: Path) -> RunRecord:
    """Continue a run from its last checkpoint (a registered one: start it); the timer continues."""
    record = read_record(run_dir)
    if record.status in ("completed", "invalid"):
        raise ValueError(f"run {record.run_id} is {record.status}; nothing to resume")
    if record.status == "registered":
        return execute(run_dir, record, nproc=record.nproc)
    write_spec(run_dir, read_spec(run_dir).model_copy(update={"resume": True}))
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if record.interruptions and ckpt is not None:  # what the resume will run again: steps after the checkpoint
        start = read_meta(ckpt)["step"]
        redo = [e for e in last_per_step(read_events(run_dir / record.files.events)) if e.step >= start]
        record.interruptions[-1].redone_steps = len(redo)
        record.interruptions[-1].lost_s = sum(e.dt_s for e in redo)
    # A preempted run that finishes is as good as one that never stopped: the timer kept counting.
    record.unofficial_reasons = [r for r in record.unofficial_reasons if not r.startswith("status ")]
    record.status, record.error, record.resumed = "running", None, record.resumed + 1
    record.official = not record.unofficial_reasons
    write_record(run_dir, record)
    return execute(run_dir, record, nproc=record.nproc)
