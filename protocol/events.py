"""The step events: one JSON object per line of `events.jsonl`, typed, written and read through this module.

    from protocol.events import StepEvent, read_events
    line = StepEvent(step=3, dt_s=0.21, loss=7.1, ...).line()          # what the trainer writes
    events = read_events(run_dir / "events.jsonl")                       # what the runner and server read

The trainer writes them (baseline/train.py); under `speedrun run` it writes them into a pipe, and the
runner, a process that never imports submission code, stamps each line with its own monotonic clock
on arrival (`runner_t`, seconds since it launched the training process) before appending it to
events.jsonl. Two clocks then describe every step: the trainer's `dt_s` and the runner's stamps
(protocol/timing.py compares them). A bare `speedrun train` writes the file itself, without stamps.

Kinds: `start` (right before the first step's clock starts), `step`, `val`, `checkpoint_start` and
`checkpoint` (around a save, which is not timed), `diverged`, `end` (the trainer's summary).
"""

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Finite = Annotated[float, Field(allow_inf_nan=False)]
Step = Annotated[int, Field(ge=0, le=10**9)]
Seconds = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wall: Finite  # unix time when the trainer wrote the line (telemetry samples are matched to it)
    runner_t: Seconds | None = None  # the runner's monotonic clock when the line arrived (absent: bare trainer)

    def line(self) -> str:
        return self.model_dump_json(exclude_none=True) + "\n"


class StartEvent(_Event):
    event: Literal["start"] = "start"
    step: Step  # the first step this launch runs (0, or the resume step)


class StepEvent(_Event):
    event: Literal["step"] = "step"
    step: Step
    dt_s: Seconds  # device-synchronized seconds of this step, MAX over ranks
    loss: float | None = None  # NaN/inf are written as null: a diverged step
    smooth_loss: float | None = None
    lr_multiplier: float | None = None  # a schedule may give inf (the run then diverges): written as null
    tokens_per_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    mfu: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    train_time_s: Seconds | None = None  # running total of the timed seconds


class ValEvent(_Event):
    event: Literal["val"] = "val"
    step: Step
    val_bpb: Finite | None = None


class CheckpointStartEvent(_Event):
    event: Literal["checkpoint_start"] = "checkpoint_start"
    step: Step


class CheckpointEvent(_Event):
    event: Literal["checkpoint"] = "checkpoint"
    step: Step
    seconds: Seconds
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None  # of model.safetensors


class DivergedEvent(_Event):
    event: Literal["diverged"] = "diverged"
    step: Step
    loss: float | None = None


class EndEvent(_Event):
    model_config = ConfigDict(extra="allow")  # the trainer's summary (baseline.train.TrainResult fields)
    event: Literal["end"] = "end"


Event = Annotated[
    StartEvent | StepEvent | ValEvent | CheckpointStartEvent | CheckpointEvent | DivergedEvent | EndEvent,
    Field(discriminator="event"),
]
EVENT = TypeAdapter(Event)


def parse_event(raw: str | dict, *, where: str = "an event") -> Event:
    """One event from its JSON line (or dict); a one-line ValueError if it does not fit."""
    try:
        return EVENT.validate_json(raw) if isinstance(raw, str) else EVENT.validate_python(raw)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(map(str, first["loc"])) or "the top level"
        raise ValueError(f"{where} does not fit the event schema at {at}: {first['msg']}") from e


def read_events(path: str | Path) -> list[Event]:
    """Every event of an events.jsonl (blank lines skipped); ValueError naming the first bad line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                out.append(parse_event(line, where=f"{Path(path).name} line {i}"))
    return out


def drop_from_step(path: str | Path, resume_step: int) -> None:
    """Before a resume from the checkpoint of `resume_step`: drop what the resumed launch will write again.

    Kept: the events of earlier steps, each launch's `start`, and the save of the checkpoint resumed
    from; dropped: steps and evals from resume_step on, later saves, and `end` summaries. Atomic: a
    reader sees the old file or the new one.
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for e in read_events(path):
        step = getattr(e, "step", None)
        if isinstance(e, EndEvent):
            continue
        if isinstance(e, CheckpointStartEvent | CheckpointEvent) and step is not None and step > resume_step:
            continue
        if isinstance(e, StepEvent | ValEvent | DivergedEvent) and step >= resume_step:
            continue
        kept.append(e.line())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
