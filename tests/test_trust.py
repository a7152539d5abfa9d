"""The verdict holds against a submitter who wants a better number than honest training gives.

Each attack of the trust issue, written as a real plug-in and run through the real runner on a tiny
track, ends as a refusal or an invalid run, or has no effect; an honest submission still completes.
The guard itself (harness/guard.py) is also tested directly, rule by rule.
"""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from harness import runner
from harness.guard import Guard, GuardViolation, RefusedAccess
from protocol.events import read_events
from protocol.record import read_record
from protocol.tracks import load_track
from submissions import check_submission, load_submission
from submissions.contract import SubmissionError
from tests.conftest import PRETRAIN
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture

METADATA = 'METADATA = {"authors": ["mallory"], "description": "an attack"}\n'
STEPS = 12


def plugin(tmp_path: Path, name: str, body: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "submission.py").write_text(METADATA + textwrap.dedent(body))
    return folder


def run_one(tmp_path: Path, submission, seed: int = 5):
    track = load_track(write_track(tmp_path, steps=STEPS))
    [run_dir] = runner.run(track, str(submission), seeds=[seed], runs_dir=tmp_path / "runs")
    return run_dir, read_record(run_dir)


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """The baseline on the tiny track, seed 5: what every attack is compared with."""
    tmp = tmp_path_factory.mktemp("honest")
    os.environ["SPEEDRUN_CACHE"] = str(tmp_path_factory.getbasetemp() / "speedrun-cache")
    return run_one(tmp, "baseline")


def test_an_honest_run_completes_with_both_clocks_agreeing(honest):
    run_dir, record = honest
    assert record.status == "completed" and record.timing.clock.ok, record.error
    steps = [e for e in read_events(run_dir / "events.jsonl") if e.event == "step"]
    assert record.timing.train_time_s == pytest.approx(sum(e.dt_s for e in steps), rel=1e-9)


def test_replaying_training_in_the_first_steps_is_timed(tmp_path):
    """Config only: 11 steps of twice the batch. nanochat's rule left them all untimed; now every one counts."""
    sub = plugin(tmp_path, "replay_config", "CONFIG = {'num_iterations': 11, 'total_batch_size': 1024}\n")
    run_dir, record = run_one(tmp_path, sub)
    assert record.status == "completed", record.error
    assert record.timing.nanochat_time_s == 0.0  # what nanochat's rule would have counted: nothing
    steps = [e for e in read_events(run_dir / "events.jsonl") if e.event == "step"]
    assert len(steps) == 11 and record.timing.train_time_s == pytest.approx(sum(e.dt_s for e in steps), rel=1e-9)
    assert record.timing.train_time_s > 0 and record.timing.clock.ok


def test_replaying_inside_the_optimizer_is_timed(tmp_path):
    """A step() that does 30 extra forward/backward passes on its first call: that step's seconds count."""
    sub = plugin(
        tmp_path,
        "replay_optimizer",
        """
        import torch
        from baseline.hooks import baseline_optimizer

        def build_optimizer(model, plan, compute_dtype):
            opt = baseline_optimizer(model, plan, compute_dtype)
            inner, calls = opt.step, []

            def step(*args, **kwargs):
                if not calls:  # the replay: train on the side inside the first step
                    x = torch.randint(0, model.config.vocab_size, (4, 128))
                    for _ in range(30):
                        model(x, x).backward()
                calls.append(1)
                return inner(*args, **kwargs)

            opt.step = step
            return opt
        """,
    )
    run_dir, record = run_one(tmp_path, sub)
    assert record.status == "completed", record.error
    steps = [e for e in read_events(run_dir / "events.jsonl") if e.event == "step"]
    later = sorted(e.dt_s for e in steps[1:])
    assert steps[0].dt_s > 5 * later[len(later) // 2]  # the replayed work is inside step 0's dt
    assert record.timing.train_time_s == pytest.approx(sum(e.dt_s for e in steps), rel=1e-9)


def test_a_loss_kernel_without_gradients_is_refused(tmp_path):
    """Forward-only timed steps: a loss that returns a detached value trains nothing; the check refuses it."""
    sub = plugin(
        tmp_path,
        "forward_only",
        """
        from baseline import kernels

        def detached(logits, targets, reduction="mean"):
            return kernels.softcap_cross_entropy(logits.detach(), targets, reduction)

        KERNELS = {"softcap_cross_entropy": detached}
        """,
    )
    with pytest.raises(SubmissionError, match="keep it differentiable"):
        check_submission(load_submission(sub))


def test_training_on_the_val_data_inside_the_eval_has_no_effect(tmp_path, honest):
    """An equivalent kernel whose no-grad path (the eval) would train on what it is scored on.

    The final metric is computed in a fresh process that never imports the submission: the marker the
    no-grad path leaves is never written, and the score is the honest run's to the last bit.
    """
    marker = tmp_path / "marker"
    sub = plugin(
        tmp_path,
        "eval_trainer",
        f"""
        import pathlib
        import torch
        from baseline import kernels

        def rms_norm(x):
            if not torch.is_grad_enabled():
                pathlib.Path({str(marker)!r}).write_text("the eval ran my code")
            return kernels.rms_norm(x)

        KERNELS = {{"rms_norm": rms_norm}}
        """,
    )
    _, record = run_one(tmp_path, sub)
    assert record.status == "completed", record.error
    assert not marker.exists()
    assert record.result.val_bpb == honest[1].result.val_bpb


def test_reading_the_val_shard_is_refused(tmp_path):
    sub = plugin(tmp_path, "peek", f"open({str(PRETRAIN / 'shard_00004.parquet')!r}, 'rb').read(10)\n")
    _, record = run_one(tmp_path, sub)
    assert record.status == "invalid" and "reading" in record.error and "refused" in record.error, record.error


def test_a_clock_patched_at_import_is_refused(tmp_path):
    sub = plugin(
        tmp_path, "slow_clock", "import time\n_real = time.perf_counter\ntime.perf_counter = lambda: _real() / 2\n"
    )
    _, record = run_one(tmp_path, sub)
    assert record.status == "invalid" and "time.perf_counter was replaced" in record.error, record.error


def test_a_clock_patch_that_restores_itself_is_caught_by_the_runners_clock(tmp_path):
    """Invisible at the step boundary (it undoes itself when the trainer reads the clock), but the runner saw it."""
    sub = plugin(
        tmp_path,
        "sneaky_clock",
        """
        import time
        from baseline.hooks import baseline_optimizer

        def build_optimizer(model, plan, compute_dtype):
            opt = baseline_optimizer(model, plan, compute_dtype)
            inner = opt.step

            def step(*args, **kwargs):
                out = inner(*args, **kwargs)
                real = time.perf_counter
                time.sleep(0.4)  # work the clock will not see

                def fake():
                    time.perf_counter = real  # gone before the guard looks
                    return real() - 0.4

                time.perf_counter = fake
                return out

            opt.step = step
            return opt
        """,
    )
    _, record = run_one(tmp_path, sub)
    assert record.status == "invalid" and "clock" in record.error, record.error
    assert not record.timing.clock.ok


def test_a_leftover_thread_is_refused(tmp_path):
    sub = plugin(
        tmp_path,
        "background",
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True, name='helper').start()\n",
    )
    _, record = run_one(tmp_path, sub)
    assert record.status == "invalid" and "thread 'helper'" in record.error, record.error


def test_changing_the_thread_count_is_refused(tmp_path):
    sub = plugin(
        tmp_path,
        "threads",
        """
        import torch
        from baseline.hooks import baseline_optimizer

        def build_optimizer(model, plan, compute_dtype):
            torch.set_num_threads(1)
            return baseline_optimizer(model, plan, compute_dtype)
        """,
    )
    _, record = run_one(tmp_path, sub)
    assert record.status == "invalid" and "set_num_threads" in record.error, record.error


def test_two_runs_of_one_seed_are_refused_before_anything_runs(tmp_path):
    track = load_track(write_track(tmp_path, steps=STEPS))
    with pytest.raises(ValueError, match="seed 3 is given twice"):
        runner.run(track, "baseline", seeds=[3, 3], runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_the_runner_never_imports_the_submission(tmp_path):
    """Every process that imports the plug-in notes its pid: the checker, warm-up and training, never the runner.

    (In /dev/shm: the training processes may write only there and into their run directory.)
    """
    pids = Path("/dev/shm") / f"speedrun-test-{os.getpid()}-{time.time_ns()}"
    sub = plugin(tmp_path, "whoami", f"import os\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "speedrun", "run", str(sub), "--track", str(write_track(tmp_path, steps=4)),
         "--runs-dir", str(tmp_path / "runs"), "--seed-list", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out
    importers = set(pids.read_text().split())
    pids.unlink()
    assert str(proc.pid) not in importers and len(importers) >= 3, (proc.pid, importers)  # check, warm-up, train


# ------------------------------------------------------------------ the guard, rule by rule


@pytest.fixture
def guard(tmp_path):
    g = Guard(threads=None, deny_reading=[tmp_path / "val"], allow_writing=[tmp_path / "run"])
    g.install()
    yield g
    g.active = False  # an audit hook cannot be removed: switch it off for the rest of this test process


def test_the_guard_refuses_reading_denied_files_and_writing_outside(guard, tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ok.txt").write_text("fine")
    with pytest.raises(RefusedAccess, match="reading"):
        open(tmp_path / "val" / "anything")
    with pytest.raises(RefusedAccess, match="writing"):
        (tmp_path / "elsewhere.txt").write_text("stash")
    link = tmp_path / "run" / "link"
    link.symlink_to(tmp_path / "val")
    with pytest.raises(RefusedAccess, match="reading"):  # not through a link either
        os.open(link / "x", os.O_RDONLY)
    with pytest.raises(GuardViolation, match="reading .* refused"):  # and trying once is enough
        guard.check(1)


def test_the_guard_sees_patches_of_frozen_code(guard):
    import baseline.train

    real = baseline.train.EventLog.write
    baseline.train.EventLog.write = lambda self, kind, **fields: None
    try:
        with pytest.raises(GuardViolation, match="baseline.train.EventLog.write was replaced"):
            guard.check(3)
    finally:
        baseline.train.EventLog.write = real
    guard.check(4)  # restored: the rule holds again


def test_the_guard_sees_a_thread_the_plugin_started(guard):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="sidecar")
    t.start()
    try:
        with pytest.raises(GuardViolation, match="thread 'sidecar'"):
            guard.check(1)
    finally:
        stop.set()
        t.join()
    guard.check(2)


def test_the_guard_sees_a_process_left_running(guard):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        with pytest.raises(GuardViolation, match=f"process {child.pid}"):
            guard.check(1)
    finally:
        child.kill()
        child.wait()
    guard.check(2)


def test_the_stats_of_a_campaign_count_every_registered_run(tmp_path):
    """A run that never ran or failed is a miss: the set does not meet the record rule."""
    from protocol import stats
    from tests.conftest import minimal_record

    done = [
        minimal_record(f"r{i}", seed=i, result={"metric": "val_bpb", "value": 6.0 + i / 100, "val_bpb": 6.0})
        for i in range(4)
    ]
    done = [r.model_copy(update={"timing": None}) for r in done]
    missed = minimal_record("r9", seed=9, status="registered")
    s = stats.summarize(stats.runs_table([*done, missed]), metric="val_bpb", target=7.0, higher_is_better=False)
    assert s["n"] == 4 and s["n_missed"] == 1 and s["p_value"] < 0.01 and not s["meets_record"]
    assert "1 registered run is a miss" in stats.format_summary(s)
    dup = minimal_record("r0b", seed=0, result={"metric": "val_bpb", "value": 6.0, "val_bpb": 6.0})
    s = stats.summarize(stats.runs_table([*done, dup]), metric="val_bpb", target=7.0, higher_is_better=False)
    assert s["n"] == 4 and any("seed 0" in e["reason"] for e in s["excluded"])  # a repeated seed counts once
