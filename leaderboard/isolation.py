"""How the verifier runs untrusted work: a child process behind the sandbox's walls, or under rlimits without one.

    out = run_limited(["-m", "leaderboard.verify_child"], job=job_json, limits=Limits(...), read_only=[bundle_dir, ...],
                      tick=renew_lease)

The child gets the job as a file (its last argument) and answers on stdout. Whatever it does, the
caller gets that answer or a ChildFailed with a one-line reason.

With bubblewrap usable (sandbox.available() is None) the child runs in the sandbox (sandbox/bwrap.py):
no network, none of the server's environment (no DATABASE_URL, no tokens), a private work dir holding
only the job, the project and `read_only` (the bundle, the server's data and tokenizer) read-only,
nothing else of the host; the cgroup memory limit, the wall clock and the disk limit (the answer is its
only output) are the sandbox's; niced, with Settings.verify_threads torch threads.

Without bubblewrap it runs under setrlimit: RLIMIT_DATA (heap and anonymous mappings, where torch's
tensors live; RLIMIT_AS would also count the address space CUDA and the allocator reserve, and break
torch), RLIMIT_CPU, RLIMIT_FSIZE and no core dumps, a wall-clock timeout that kills its process group,
niced. That is enough for verification, which runs no uploaded code (it reads safetensors and JSON with
the frozen eval), so the worker keeps verifying weights and says once at start-up that it re-runs
nothing (leaderboard/reproduction.py: re-running uploaded code needs the sandbox, and never happens
without it).
"""

import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sandbox
from leaderboard.redact import redact
from leaderboard.settings import REPO

JOB_FILE = "job.json"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_s: int
    wall_s: float
    file_bytes: int
    nice: int = 10  # background work: the web server on the same machine comes first
    threads: int | None = None  # torch's threads in the child (None: torch's default, every core)


class ChildFailed(RuntimeError):
    """The child did not answer: killed by a limit, crashed, or timed out (`reason` says which)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _apply(limits: Limits) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.nice(limits.nice)

    return preexec


def launch(args: list[str], limits: Limits) -> subprocess.Popen:
    """Start `python args...` under `limits`, in its own process group, with pipes for stdout/stderr."""
    env = dict(os.environ)
    if limits.threads:
        env["OMP_NUM_THREADS"] = str(limits.threads)  # torch reads it at import for its intra-op threads
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_apply(limits),  # noqa: PLW1509 -- only setrlimit, which is async-signal-safe
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _last_line(stderr: bytes) -> str:
    return (stderr.decode("utf-8", "replace").strip().splitlines() or ["no error output"])[-1]


def _why(proc: subprocess.Popen, stderr: bytes, limits: Limits) -> str:
    rc = proc.returncode
    if rc == -signal.SIGXCPU or rc == -signal.SIGKILL and not stderr:
        return f"the verification used over {limits.cpu_s:,} CPU seconds or was killed (signal {-rc})"
    if rc == -signal.SIGXFSZ:
        return f"the verification tried to write over {limits.file_bytes:,} bytes"
    if rc < 0:
        return f"the verification died of signal {signal.Signals(-rc).name}"
    return _exited(rc, _last_line(stderr), limits)


def _exited(rc: int | None, last: str, limits: Limits) -> str:
    if "MemoryError" in last or "memory" in last.lower():
        return (
            f"the verification ran out of its {limits.memory_bytes / 2**30:.1f} GiB memory limit ({redact(last)[:200]})"
        )
    return f"the verification exited with code {rc}: {redact(last)[:300]}"


def _run_rlimited(args: list[str], limits: Limits, tick, tick_s: float) -> bytes:
    proc = launch(args, limits)
    waited = 0.0
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=min(tick_s, max(limits.wall_s - waited, 0.1)))
                break
            except subprocess.TimeoutExpired:
                waited += tick_s
                if waited >= limits.wall_s:
                    _kill(proc)
                    raise ChildFailed(f"the verification ran past the server's {limits.wall_s:g} s limit") from None
                if tick is not None and not tick():
                    _kill(proc)
                    raise ChildFailed("the job's lease was lost to another worker") from None
    except BaseException:
        if proc.poll() is None:
            _kill(proc)
        raise
    if proc.returncode != 0:
        raise ChildFailed(_why(proc, err, limits))
    return out


def _run_sandboxed(args: list[str], work: Path, limits: Limits, read_only, tick, tick_s: float) -> bytes:
    out, err = work.parent / "stdout", work.parent / "stderr"  # outside the work dir: the child cannot touch them
    env = {"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    if limits.threads:
        env["OMP_NUM_THREADS"] = str(limits.threads)
    with open(out, "wb") as f_out, open(err, "wb") as f_err:
        done = sandbox.run(
            ["nice", "-n", str(limits.nice), sys.executable, *args],
            work_dir=work,
            read_only=[REPO, *read_only],
            env=env,
            limits=sandbox.Limits(wall_s=limits.wall_s, memory_bytes=limits.memory_bytes, disk_bytes=limits.file_bytes),
            cwd=REPO,
            stdout=f_out,
            stderr=f_err,
            tick=tick,
            tick_s=tick_s,
        )
    if done.status == "ok":
        return out.read_bytes()
    if done.status == "cancelled":
        raise ChildFailed("the job's lease was lost to another worker")
    if done.status == "timeout":
        raise ChildFailed(f"the verification ran past the server's {limits.wall_s:g} s limit")
    if done.status == "memory":
        raise ChildFailed(f"the verification ran out of its {limits.memory_bytes / 2**30:.1f} GiB memory limit")
    if done.status == "failed":
        raise ChildFailed(_exited(done.returncode, _last_line(err.read_bytes()[-65536:]), limits))
    raise ChildFailed(f"the verification was stopped by the sandbox: {done.reason}")


def run_limited(
    args: list[str],
    *,
    job: bytes,
    limits: Limits,
    read_only: Sequence[Path] = (),
    tick: Callable[[], bool] | None = None,
    tick_s: float = 30.0,
) -> bytes:
    """The stdout of `python args... JOB_FILE` once it exits 0; ChildFailed otherwise. In the sandbox when it can
    run (reading only `read_only` and the project), else under rlimits. `tick()` is called every `tick_s` while
    it runs (the verifier renews its lease there); when it returns False the child is killed."""
    with tempfile.TemporaryDirectory(prefix="verify-") as scratch:
        work = Path(scratch) / "work"
        work.mkdir()
        (work / JOB_FILE).write_bytes(job)
        args = [*args, str(work / JOB_FILE)]
        if sandbox.available() is None:
            return _run_sandboxed(args, work, limits, read_only, tick, tick_s)
        return _run_rlimited(args, limits, tick, tick_s)
