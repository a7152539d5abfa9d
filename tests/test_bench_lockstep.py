"""bench/lockstep.py: two benchmark processes take turns, so neither times a step while the other works."""

import itertools
import json
import os
import sys
import threading
import types

import pytest

from bench.lockstep import GO, Side, Turns, run_in_lockstep, take_turns_around
from bench.train_throughput import REPO_ROOT

# A stand-in trainer: `hooks.sync()` brackets each timed step, as synchronize does in ours; between steps it
# does untimed work (half a step) that must not overlap the other side's timed step either.
CHILD = r"""
import json, sys, time, types
from bench.lockstep import Turns, take_turns_around
hooks = types.SimpleNamespace(sync=lambda: None)
take_turns_around(hooks, "sync", Turns.from_env())
steps, step_s, crash_at = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for i in range(steps):
    hooks.sync(); t0 = time.monotonic()
    if i == crash_at:
        raise SystemExit(3)
    time.sleep(step_s); t1 = time.monotonic(); hooks.sync()
    time.sleep(step_s / 2)
    print(json.dumps({"start": t0, "end": t1, "idle_end": time.monotonic()}), flush=True)
"""


def side(name: str, steps: int = 4, crash_at: int = -1) -> Side:
    cmd = [sys.executable, "-c", CHILD, str(steps), "0.05", str(crash_at)]
    return Side(name, cmd, str(REPO_ROOT), {**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_the_sides_take_turns_and_never_overlap_a_timed_step():
    a, b = side("a"), side("b")
    run_in_lockstep([a, b], echo=lambda _line: None)
    steps = {s.name: [json.loads(line) for line in s.lines] for s in (a, b)}
    assert [len(v) for v in steps.values()] == [4, 4]
    timed = sorted((step["start"], step["end"], name) for name, v in steps.items() for step in v)
    assert [name for _, _, name in timed] == ["a", "b"] * 4  # strict turns, in the order given
    for (_, end, _), (start, _, _) in itertools.pairwise(timed):
        assert end <= start  # no two timed steps at once
    for name, other in (("a", "b"), ("b", "a")):
        for step in steps[name]:  # the untimed work after a step ends before the other side starts one
            assert not any(step["end"] < o["start"] < step["idle_end"] for o in steps[other])


def test_a_side_that_crashes_mid_run_fails_the_benchmark_without_a_hang():
    outcome = {}

    def run():
        try:
            run_in_lockstep([side("ours"), side("nanochat", crash_at=2)], echo=lambda _line: None)
        except SystemExit as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "run_in_lockstep hung on a crashed side"
    assert "nanochat exited with 3" in outcome["error"]


def test_only_calls_from_the_named_file_take_turns():
    to_parent_r, to_parent_w = os.pipe()
    from_parent_r, from_parent_w = os.pipe()
    try:
        os.write(from_parent_w, GO)  # one turn granted
        clock = types.SimpleNamespace(now=lambda: 1.0)
        take_turns_around(clock, "now", Turns(to_parent_w, from_parent_r), caller_file="trainer.py")
        elsewhere = {"clock": clock}
        exec(compile("for _ in range(3): clock.now()", "library.py", "exec"), elsewhere)  # not gated
        trainer = {"clock": clock}
        exec(compile("t0 = clock.now(); t1 = clock.now()", "trainer.py", "exec"), trainer)  # one step
        assert (trainer["t0"], trainer["t1"]) == (1.0, 1.0)
        assert os.read(to_parent_r, 8) == b"RD"  # ready, then done: the library's calls sent nothing
    finally:
        for fd in (to_parent_r, to_parent_w, from_parent_r, from_parent_w):
            os.close(fd)


def test_a_child_whose_parent_went_away_stops_with_a_clear_error():
    to_parent_r, to_parent_w = os.pipe()
    from_parent_r, from_parent_w = os.pipe()
    os.close(from_parent_w)  # the parent is gone: the child reads end-of-file
    try:
        with pytest.raises(SystemExit, match="parent process went away"):
            Turns(to_parent_w, from_parent_r).before_step()
    finally:
        for fd in (to_parent_r, to_parent_w, from_parent_r):
            os.close(fd)
