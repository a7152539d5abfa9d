"""`speedrun run`: prepare a track, launch the frozen trainer with a submission, record everything.

    speedrun run baseline --track cpu-books --seeds 3
    speedrun run my_optimizer --track gpt2 --nproc 8 --seeds 5

For every seed the runner makes `runs/<run_id>/`, writes `run.json` (what to train) and a first
`record.json` (status "running"), then launches `harness.trainer_process` as a child process (through
torchrun when --nproc > 1) while it samples telemetry, shows a live progress line from the step
events, and forwards SIGINT/SIGTERM. Whatever happens, the record is rewritten at the end with the
final status (completed, stopped, failed, diverged, killed), timings, result, telemetry summary and
provenance; logs, events and telemetry stay on disk. `speedrun resume RUN_ID` continues a run from its
last checkpoint with the timer continuing (spot instances).
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from baseline.config import TrainConfig, plan_training
from baseline.dataset import download_shards, list_shards, shard_name
from baseline.tokenizer import Tokenizer, train_from_shards
from harness import provenance, telemetry
from harness.trainer_process import read_outcome
from protocol.paths import track_data_dir, track_tokenizer_dir
from protocol.record import (
    EXIT_DIVERGED,
    Provenance,
    Result,
    RunRecord,
    RunSpec,
    SubmissionRef,
    TelemetrySummary,
    Throughput,
    Timing,
    TrackRef,
    now_iso,
    read_record,
    read_spec,
    write_record,
    write_spec,
)
from protocol.timing import is_timed, last_per_step
from protocol.tracks import Track, beats
from submissions.conformance import check_submission
from submissions.contract import check_eval_budget, load_submission

REPO = Path(__file__).resolve().parents[1]  # the training process runs from the repo root
KILL_GRACE_S = 30


class Preflight(ValueError):
    """The run does not match its track; the message says how to fix it or to pass --unofficial."""


# ---------------------------------------------------------------------------------------- preparation


def prepare_data(track: Track, data_dir: Path) -> list[Path]:
    """The track's shards in data_dir, downloaded (with resume) when the track's source allows."""
    if track.dataset.source == "climbmix":
        if track.dataset.shards:
            wanted = [int(name.removeprefix("shard_").removesuffix(".parquet")) for name in track.dataset.shards]
        else:
            wanted = list(range(track.dataset.num_train_shards))
        missing = [i for i in wanted if not (data_dir / shard_name(i)).is_file()]
        if missing:
            print(f"downloading {len(missing)} ClimbMix shards into {data_dir}")
            download_shards(missing, data_dir)
    files = list_shards(data_dir)
    if track.dataset.shards:
        names = {f.name: f for f in files}
        absent = [n for n in track.dataset.shards if n not in names]
        if absent:
            raise FileNotFoundError(f"{data_dir} lacks {absent} of track {track.name}: pass --data-dir with them")
        files = [names[n] for n in track.dataset.shards]
    return files


def prepare_tokenizer(track: Track, data_dir: Path, data_hash: str) -> Path:
    """The track's tokenizer, trained once per (track, data) and cached."""
    spec = track.tokenizer
    out = track_tokenizer_dir(track, data_hash)
    if not (out / "tokenizer.json").is_file():
        print(f"training a {spec.vocab_size}-token tokenizer on {data_dir} -> {out}")
        train_from_shards(data_dir, out, spec.vocab_size, spec.max_chars, spec.doc_cap)
    return out


def preflight(track: Track, nproc: int, nnodes: int) -> list[str]:
    """Reasons this machine does not match the track's hardware (empty when it does)."""
    hw, problems = track.hardware, []
    if hw.kind == "cuda":
        count = torch.cuda.device_count()
        names = {torch.cuda.get_device_name(i) for i in range(count)}
        if nproc * nnodes != hw.gpu_count:
            problems.append(f"track {track.name} runs on {hw.gpu_count} GPUs, this run uses {nproc * nnodes} ranks")
        if count < nproc:
            problems.append(f"--nproc {nproc} but this machine has {count} CUDA GPUs")
        if hw.gpu_model and not all(hw.gpu_model.lower() in n.lower() for n in names):
            problems.append(f"track {track.name} needs {hw.gpu_model} GPUs, this machine has {sorted(names) or 'none'}")
    else:
        if (os.cpu_count() or 1) < (hw.cpu_threads or 1):
            problems.append(f"track {track.name} uses {hw.cpu_threads} CPU threads, this machine has {os.cpu_count()}")
        if nproc != 1:
            problems.append(f"track {track.name} is one process; drop --nproc")
    return problems


# ---------------------------------------------------------------------------------------- one run


def _launch(run_dir: Path, nproc: int, nnodes: int, node_rank: int, rdzv: str | None, env: dict):
    if nproc == 1 and nnodes == 1:
        cmd = [sys.executable, "-m", "harness.trainer_process", str(run_dir)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}"]
        cmd += [f"--node_rank={node_rank}", f"--rdzv_endpoint={rdzv}"] if rdzv else ["--standalone"]
        cmd += ["-m", "harness.trainer_process", str(run_dir)]
    log = open(run_dir / "train.log", "a")  # noqa: SIM115 -- the child writes into it until it exits
    # A new session: one signal reaches the trainer and every torchrun rank, never this process.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    return proc, log


class _Progress:
    """Tails events.jsonl and shows step/total, loss, tok/s, MFU and ETA on one line."""

    def __init__(self, events_path: Path, total_steps: int, stream=sys.stdout):
        self.path, self.offset, self.stream, self.total = events_path, 0, stream, total_steps
        self.file_id = None  # (inode, device) of the file read so far
        self.tty = stream.isatty()
        self.last_print = 0.0

    def poll(self, final: bool = False):
        if not self.path.is_file():
            return
        with open(self.path) as f:
            stat = os.fstat(f.fileno())
            if (stat.st_ino, stat.st_dev) != self.file_id or stat.st_size < self.offset:
                self.file_id, self.offset = (stat.st_ino, stat.st_dev), 0  # a resumed run rewrote the file
            f.seek(self.offset)
            lines = f.readlines()
            if lines and not lines[-1].endswith("\n"):  # a line still being written
                lines.pop()
            self.offset += sum(len(line) for line in lines)
        steps = [e for e in map(json.loads, lines) if e["event"] == "step"]
        if not steps:
            return
        e = steps[-1]
        now = time.monotonic()
        if not (self.tty or final or now - self.last_print > 10):
            return
        self.last_print = now
        eta_s = (self.total - e["step"] - 1) * e["dt_s"]
        line = (
            f"step {e['step'] + 1}/{self.total} | loss {e['smooth_loss']:.4f} | {e['tokens_per_s']:,.0f} tok/s | "
            f"MFU {e['mfu']:.1f}% | timed {e['train_time_s']:.1f}s | ETA {eta_s / 60:.1f} min"
        )
        print(
            ("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=self.stream, flush=True
        )


def execute(run_dir: Path, record: RunRecord, *, nproc=1, nnodes=1, node_rank=0, rdzv=None) -> RunRecord:
    """Launch the training process for run_dir, watch it, and return the finished record (also written)."""
    spec = read_spec(run_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if spec.cpu_threads:
        env["OMP_NUM_THREADS"] = str(spec.cpu_threads)
    stop = {"signal": None}

    def forward(signum, _frame):
        stop["signal"] = signum
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)

    proc, log = _launch(run_dir, nproc, nnodes, node_rank, rdzv, env)
    old_handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = _Progress(run_dir / record.files.events, record.plan["num_iterations"])
    sampler = telemetry.TelemetrySampler(run_dir / _telemetry_file(record), pid=proc.pid)
    try:
        with sampler:
            while proc.poll() is None:
                progress.poll()
                time.sleep(0.5)
                if stop["signal"] is not None:
                    try:
                        proc.wait(KILL_GRACE_S)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
        progress.poll(final=True)
        if sys.stdout.isatty():
            print()
    finally:
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
        log.close()
    return finish(run_dir, record, spec, proc.returncode, killed=stop["signal"] is not None)


def _timed_window(run_dir: Path) -> tuple[float | None, float | None]:
    """Wall-clock bounds of the timed steps, from the step events."""
    path = run_dir / "events.jsonl"
    events = (
        [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "step"] if path.is_file() else []
    )
    timed = [e for e in last_per_step(events) if is_timed(e["step"])]
    if not timed:
        return None, None
    return timed[0]["wall"] - timed[0]["dt_s"], timed[-1]["wall"]


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


def finish(run_dir: Path, record: RunRecord, spec: RunSpec, returncode: int, killed: bool) -> RunRecord:
    """Fill the record from what the training process left behind, whatever the outcome."""
    result, evaluation = read_outcome(run_dir)
    if killed:
        status = "killed"
    elif returncode == EXIT_DIVERGED:
        status = "diverged"
    elif returncode != 0 or result is None:
        status = "failed"
        log = run_dir / record.files.log
        tail = log.read_text().strip().splitlines()[-3:] if log.is_file() else []
        record.error = f"the training process exited with code {returncode}: " + " | ".join(tail)
    else:
        status = result.status
    record.status, record.finished = status, now_iso()
    if result:
        record.timing = Timing(
            train_time_s=result.train_time_s, warmup_time_s=result.warmup_time_s, setup_time_s=result.setup_time_s,
            eval_time_s=result.eval_time_s, checkpoint_time_s=result.checkpoint_time_s,
            wall_time_s=result.wall_time_s, steps=result.step, num_iterations=result.num_iterations,
        )  # fmt: skip
        record.throughput = Throughput(tokens_per_s=result.tokens_per_s, mfu=result.mfu)
        record.files.checkpoint = os.path.relpath(result.checkpoint, run_dir) if result.checkpoint else None
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
) -> list[Path]:
    """Run `submission` on `track` once per seed; returns the run directories."""
    plugin = load_submission(submission)  # refuse a broken plug-in before any data or training work
    check_submission(plugin)
    reasons = preflight(track, nproc, nnodes)
    if reasons and not unofficial:
        raise Preflight(f"{'; '.join(reasons)}: run on the track's hardware, or pass --unofficial to run anyway")
    data_dir = track_data_dir(track, data_dir)
    files = prepare_data(track, data_dir)
    data_hash = provenance.shards_hash(files)
    if track.dataset.content_hash and data_hash != track.dataset.content_hash:
        pinned = track.dataset.content_hash
        problem = f"data in {data_dir} has content hash {data_hash[:12]}…, track {track.name} pins {pinned[:12]}…"
        if not unofficial:
            raise Preflight(f"{problem}: use the track's shards, or pass --unofficial")
        reasons.append(problem)
    tokenizer_dir = prepare_tokenizer(track, data_dir, data_hash)
    vocab = Tokenizer.load(tokenizer_dir).vocab_size
    if max_steps is not None:
        reasons.append(f"smoke run (--max-steps {max_steps})")
    submission_ref = SubmissionRef(**provenance.submission_ref(plugin.path))
    run_dirs = []
    for seed in seeds:
        config = TrainConfig(**{**track.recipe, **plugin.config_overrides, "vocab_size": vocab, "seed": seed})
        if track.target.metric == "val_bpb":
            config = replace(config, eval_tokens=track.target.eval_tokens)
        plan = plan_training(config, nproc * nnodes)  # fails here, before launching, on a bad shape
        check_eval_budget(config, nproc * nnodes)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{track.name}-{submission_ref.name}-s{seed}"
        run_dir = runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        spec = RunSpec(
            submission=_relative(plugin.path, run_dir),
            config=asdict(config),
            data_dir=_relative(data_dir, run_dir),
            tokenizer_dir=_relative(tokenizer_dir, run_dir),
            device="cpu" if track.hardware.kind == "cpu" else "cuda",
            max_steps=max_steps,
            target_metric=track.target.metric,
            core_max_per_task=track.target.core_max_per_task,
            cpu_threads=track.hardware.cpu_threads if track.hardware.kind == "cpu" else None,
            price_per_hour=track.price_per_hour,
            gpu_count=max(track.hardware.gpu_count, 1),
        )
        write_spec(run_dir, spec)
        record = RunRecord(
            run_id=run_id,
            status="running",
            official=not reasons,
            unofficial_reasons=list(reasons),
            created=now_iso(),
            command=provenance.portable_argv(sys.argv),
            seed=seed,
            nproc=nproc * nnodes,
            submission=submission_ref,
            track=TrackRef(
                name=track.name,
                version=track.version,
                metric=track.target.metric,
                threshold=track.target.threshold,
                higher_is_better=track.target.higher_is_better,
            ),  # fmt: skip
            config=asdict(config),
            plan=plan.to_dict(),
            provenance=Provenance(
                **provenance.collect(
                    submission_dir=plugin.path,
                    data_files=files,
                    data_hash=data_hash,
                    tokenizer_dir=tokenizer_dir,
                    config=asdict(config),
                    seed=seed,
                )  # fmt: skip
            ),
        )
        write_record(run_dir, record)
        print(f"run {run_id}: {track.name}, {submission_ref.name}, seed {seed}, {plan.num_iterations} steps")
        record = execute(run_dir, record, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv)
        timed_s = record.timing.train_time_s if record.timing else 0.0
        print(
            f"run {run_id}: {record.status}, timed {timed_s:.1f}s, "
            f"{record.result.metric} {record.result.value}, target met: {record.result.target_met}"
        )
        run_dirs.append(run_dir)
        if record.status == "killed":
            break
    return run_dirs


def _relative(path: Path, run_dir: Path) -> str:
    """`path` as seen from the run directory: run.json names no absolute path of this machine."""
    return os.path.relpath(Path(path).resolve(), run_dir.resolve())


def resume(run_dir: Path) -> RunRecord:
    """Continue a run from its last checkpoint; the timer continues from the saved seconds."""
    record = read_record(run_dir)
    if record.status == "completed":
        raise ValueError(f"run {record.run_id} already completed; nothing to resume")
    write_spec(run_dir, read_spec(run_dir).model_copy(update={"resume": True}))
    # A preempted run that finishes is as good as one that never stopped: the timer kept counting.
    record.unofficial_reasons = [r for r in record.unofficial_reasons if not r.startswith("status ")]
    record.status, record.error, record.resumed = "running", None, record.resumed + 1
    record.official = not record.unofficial_reasons
    write_record(run_dir, record)
    return execute(run_dir, record, nproc=record.nproc)
