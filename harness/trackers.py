"""Experiment trackers: a run's step events, as its record has them, sent to wandb or trackio.

    speedrun run baseline --track cpu-books --log-to wandb     # pip install -e '.[wandb]'
    speedrun train --depth 4 ... --log-to trackio              # pip install -e '.[trackio]'

Under `speedrun run` the runner logs each event as it stamps it, then the run's result: the timed
training process never imports a tracker (no extra threads or files there; the tracker's own work
runs beside it, like the telemetry sampler). Under the bare `speedrun train` the trainer's event
stream is teed through `EventTee`. Neither needs an account: trackio keeps its runs in a local
database (`trackio show` opens them); wandb logs online when it has an API key (`wandb login`,
WANDB_API_KEY) and otherwise offline into the run directory (`wandb sync DIR` uploads it later).
"""

import importlib
import os
import sys
from pathlib import Path

from protocol.events import CheckpointEvent, StepEvent, ValEvent, parse_event

TRACKERS = ("wandb", "trackio")
PROJECT = "speedrun"
STEP_FIELDS = ("loss", "smooth_loss", "lr_multiplier", "dt_s", "tokens_per_s", "mfu", "train_time_s")


def event_metrics(event) -> dict:
    """What one event logs: a step's fields, a val eval's bpb, a checkpoint's seconds (empty: nothing)."""
    if isinstance(event, StepEvent):
        return {k: v for k in STEP_FIELDS if (v := getattr(event, k)) is not None}
    if isinstance(event, ValEvent) and event.val_bpb is not None:
        return {"val_bpb": event.val_bpb}
    if isinstance(event, CheckpointEvent):
        return {"checkpoint_s": event.seconds}
    return {}


def require(kind: str):
    """The tracker's module (imported only when asked for: an optional dependency), or one line saying how to get it."""
    if kind not in TRACKERS:
        raise ValueError(f"unknown tracker {kind!r}: use one of {', '.join(TRACKERS)}")
    try:
        return importlib.import_module(kind)
    except ImportError:
        raise ValueError(f"--log-to {kind} needs the {kind} package: pip install -e '.[{kind}]'") from None


class Tracker:
    """One tracker run. log_event() may be called from another thread (the runner's event reader): both
    libraries are driven through their run object, never through module state bound to the caller's thread.
    A tracker that fails is switched off with one warning: it must never cost a run its record."""

    def __init__(self, kind: str, run):
        self.kind, self.run = kind, run
        self.last_step = 0
        self.failed = False

    def log_event(self, event) -> None:
        if (metrics := event_metrics(event)) and not self.failed:
            self.last_step = max(self.last_step, event.step)
            self._call(self.run.log, metrics, step=event.step)

    def finish(self, summary: dict) -> None:
        """The run's outcome (status, val bpb, timed seconds, ...), then close the tracker run."""
        numbers = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.kind == "wandb":
            self._call(self.run.summary.update, summary)
        else:  # trackio has no run summary: the numbers go in at the last step
            self._call(self.run.log, numbers, step=self.last_step)
        self._call(self.run.finish)

    def _call(self, fn, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- the tracker is a convenience; the record is the result
            self.failed = True
            print(f"speedrun: warning: {self.kind} stopped logging ({type(e).__name__}: {e})", file=sys.stderr)


def open_tracker(kind: str, *, name: str, config: dict, directory: Path, group: str | None = None) -> Tracker:
    """Start a tracker run named `name`; `directory` holds wandb's files (trackio keeps its own database)."""
    module = require(kind)
    if kind == "wandb":
        return Tracker(kind, _wandb_run(module, name=name, config=config, directory=directory, group=group))
    # The runner samples CPU and GPU itself (harness/telemetry.py): trackio's samplers would be a second copy.
    return Tracker(kind, module.init(project=PROJECT, name=name, group=group, config=config, auto_log_cpu=False,
                                     auto_log_gpu=False))  # fmt: skip


def _wandb_run(wandb, *, name: str, config: dict, directory: Path, group: str | None):
    directory.mkdir(parents=True, exist_ok=True)
    # console off: wandb would otherwise wrap stdout, where the runner draws its progress line;
    # no stats: the runner samples the machine itself.
    settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
    args = dict(project=PROJECT, name=name, group=group, config=config, dir=str(directory), settings=settings)
    try:
        return wandb.init(**args)
    except wandb.errors.UsageError:
        if os.environ.get("WANDB_MODE"):
            raise
        print(f"wandb: no API key (`wandb login`): logging offline under {directory}; `wandb sync` uploads it later")
        return wandb.init(**args, mode="offline")


class EventTee:
    """The bare trainer's event stream: each line goes to events.jsonl and, as an event, to the tracker."""

    def __init__(self, path: Path, tracker: Tracker):
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 -- closed by the trainer, like its own file
        self.tracker = tracker

    def write(self, line: str) -> None:
        self.file.write(line)
        self.tracker.log_event(parse_event(line, where="a trainer event"))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
