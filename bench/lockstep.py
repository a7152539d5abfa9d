"""Lock step: two benchmark processes take turns, one training step each, so both meet the same machine.

On a shared VM the speed drifts by several percent over minutes, more than two trainers of the same
recipe differ; run one after the other, the side that met a slower stretch looks slower, and three
pairs do not settle a 1% question. In lock step both sides run at once but only one trains at a
time: the parent lets one child take one step while the other is blocked on a pipe (untimed), then
the other. Step k of both sides runs within seconds, and nothing either side does outside its timed
steps (set-up aside) overlaps the other's timed step.

Protocol, one byte per message; the child's two pipe ends are named in $BENCH_LOCKSTEP ("W,R"):
  child:  before each timed step writes R and blocks reading G; after it, writes D.
  parent: waits for R from every child (set-ups overlap; untimed), then round after round gives each
          side in turn G, waits for its D, then for its next R or its exit (its untimed work between
          steps ends before the other side starts a step).
Standard library only: nanochat's child loads this file by path (nothing of ours is on its sys.path).
"""

import itertools
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass, field

ENV = "BENCH_LOCKSTEP"
READY, GO, DONE = b"R", b"G", b"D"


@dataclass
class Turns:
    """The child's end: wait for its turn before a step, hand it back after."""

    to_parent: int
    from_parent: int

    @classmethod
    def from_env(cls) -> "Turns | None":
        fds = os.environ.get(ENV)
        return cls(*map(int, fds.split(","))) if fds else None

    def before_step(self):
        os.write(self.to_parent, READY)
        if os.read(self.from_parent, 1) != GO:
            raise SystemExit("lockstep: the benchmark's parent process went away")

    def after_step(self):
        os.write(self.to_parent, DONE)


def take_turns_around(owner, name: str, turns: Turns, caller_file: str | None = None):
    """Wrap owner.name, a call that brackets every timed step (before its clock starts, after it stops), so
    that its calls alternate: wait for the turn, then call; call, then hand the turn back. With caller_file,
    only calls made from that file count (time.time is called elsewhere too)."""
    real = getattr(owner, name)
    calls = itertools.count()

    def bracket(*args, **kwargs):
        if caller_file is not None and not sys._getframe(1).f_code.co_filename.endswith(caller_file):
            return real(*args, **kwargs)
        if next(calls) % 2 == 0:
            turns.before_step()
            return real(*args, **kwargs)
        out = real(*args, **kwargs)
        turns.after_step()
        return out

    setattr(owner, name, bracket)


@dataclass
class Side:
    """One child of a lock-step run: its command, and what the parent keeps of it."""

    name: str
    cmd: list[str]
    cwd: str
    env: dict
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    to_child: int = -1
    from_child: int = -1


def run_in_lockstep(sides: list[Side], echo=print) -> None:
    """Run the sides at once, one timed step at a time in list order; fill each side's output lines.
    Raises SystemExit naming the side when a child fails, so a crash never hangs the benchmark."""
    drains = []
    try:
        for side in sides:
            up_r, up_w = os.pipe()  # child -> parent
            down_r, down_w = os.pipe()  # parent -> child
            side.proc = subprocess.Popen(
                side.cmd,
                cwd=side.cwd,
                env={**side.env, ENV: f"{up_w},{down_r}"},
                pass_fds=(up_w, down_r),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            os.close(up_w)
            os.close(down_r)
            side.from_child, side.to_child = up_r, down_w
            drain = threading.Thread(target=_drain, args=(side, echo), daemon=True)
            drain.start()
            drains.append(drain)
        live = [side for side in sides if _expect(side, READY, or_exit=True)]
        while live:
            for side in list(live):
                os.write(side.to_child, GO)
                _expect(side, DONE)
                if not _expect(side, READY, or_exit=True):
                    live.remove(side)
        for drain in drains:
            drain.join()
    finally:
        for side in sides:
            if side.proc is not None and side.proc.poll() is None:
                side.proc.kill()
                side.proc.wait()
            for fd in (side.to_child, side.from_child):
                if fd >= 0:
                    os.close(fd)
    for side in sides:
        if side.proc.returncode != 0:
            raise SystemExit(f"lockstep: {side.name} exited with {side.proc.returncode}: see its output above")


def _expect(side: Side, message: bytes, or_exit: bool = False) -> bool:
    """Wait for `message` from the side's child: True when it came, False when the child exited instead
    (allowed only with or_exit: a finished run). The child's helpers (compile workers) may hold its pipe
    end open after it exits, so its exit is polled rather than read as end-of-file."""
    while True:
        ready, _, _ = select.select([side.from_child], [], [], 0.5)
        got = os.read(side.from_child, 1) if ready else None  # b"": end of file
        if got == message:
            return True
        if got:
            raise SystemExit(f"lockstep: {side.name} sent {got!r}, expected {message!r}")
        if got == b"" or side.proc.poll() is not None:
            side.proc.wait()
            if or_exit and side.proc.returncode == 0:
                return False
            raise SystemExit(
                f"lockstep: {side.name} exited with {side.proc.returncode} while the parent waited for {message!r}"
            )


def _drain(side: Side, echo):
    for line in side.proc.stdout:
        line = line.rstrip("\n")
        side.lines.append(line)
        echo(f"[{side.name}] {line}")
