"""The runner's clock on the step events: a FIFO the training process writes into, stamped as each line arrives.

    pipe = EventPipe(run_dir / "events.fifo", run_dir / "events.jsonl", on_event=progress.update)
    env["SPEEDRUN_EVENTS"] = str(pipe.path)     # the training process opens it for writing
    ... the training process runs ...
    pipe.close()                                 # pipe.events: what arrived, stamped; pipe.problems: what was wrong

The runner never imports submission code, so its clock is out of a plug-in's reach. A reader thread
blocks on the FIFO and stamps every line with `runner_t` (time.monotonic() since the pipe opened)
the moment it arrives, validates it against protocol/events.py, checks the order (one `start`, then
steps counting up by one from it), and appends it to events.jsonl, which the runner alone writes.
protocol.timing.clock_check then compares the two clocks. A FIFO rather than an inherited descriptor:
torchrun's workers do not inherit descriptors, but every rank can open a path (rank 0 does).
"""

import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from protocol.events import Event, StartEvent, StepEvent, parse_event


class EventPipe:
    def __init__(self, path: Path, events_path: Path, on_event: Callable[[Event], None] | None = None):
        self.path, self.events_path, self.on_event = Path(path), Path(events_path), on_event
        self.path.unlink(missing_ok=True)
        os.mkfifo(self.path, 0o600)
        # Read and write ends in one descriptor: reads block (never EOF) between writers, and the runner
        # can write END itself to wake the reader when the training process is gone.
        self._fd = os.open(self.path, os.O_RDWR)
        # The end marker is a secret of this process: a line written into the FIFO by anyone else cannot end it.
        self._end = b"speedrun-end-" + secrets.token_hex(16).encode()
        self._t0 = time.monotonic()
        self.events: list[Event] = []
        self.problems: list[str] = []
        self._next_step: int | None = None
        self._thread = threading.Thread(target=self._read, name="event-pipe", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        with open(self.events_path, "a", buffering=1) as out:
            while True:
                chunk = os.read(self._fd, 1 << 16)
                arrived = time.monotonic() - self._t0
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line == self._end:
                        return
                    if line.strip():
                        self._take(line.decode("utf-8", "replace"), arrived, out)

    def _take(self, line: str, arrived: float, out) -> None:
        try:
            event = parse_event(line, where="a line from the training process")
        except ValueError as e:
            self.problems.append(str(e))
            return
        event.runner_t = arrived
        if isinstance(event, StartEvent):
            if self._next_step is not None:
                self.problems.append(f"a second start event (step {event.step}) in one launch")
            self._next_step = event.step
        elif isinstance(event, StepEvent):
            if event.step != self._next_step:
                self.problems.append(f"step {event.step} arrived where step {self._next_step} was due")
            self._next_step = event.step + 1
        out.write(event.line())
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def close(self) -> None:
        """After the training process exited: read what is left, then stop the reader."""
        os.write(self._fd, self._end + b"\n")
        self._thread.join(timeout=30)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
