"""How the verifier runs untrusted work: a child process with resource limits and a wall-clock timeout.

    out = run_limited(["-m", "leaderboard.verify_child"], stdin=job, limits=Limits(...), tick=renew_lease)

`launch` is the one place a child is started: swapping it for the bubblewrap sandbox (sandbox/, another
branch) changes nothing else. The limits are setrlimit's, applied in the child before it runs Python:
RLIMIT_DATA (heap and anonymous mappings, where torch's tensors live; RLIMIT_AS would also count the
address space CUDA and the allocator reserve, and break torch), RLIMIT_CPU, RLIMIT_FSIZE (the child
writes nothing but its answer to a pipe) and no core dumps; a wall-clock timeout kills its whole process
group. It runs niced, with Settings.verify_threads torch threads: on a machine that also serves the
board, a verification takes what the server leaves. Whatever the child does, the caller gets its stdout
or a ChildFailed with a one-line reason.
"""

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from leaderboard.redact import redact


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
    """Start `python args...` under `limits`, in its own process group, with pipes for stdin/stdout/stderr."""
    env = dict(os.environ)
    if limits.threads:
        env["OMP_NUM_THREADS"] = str(limits.threads)  # torch reads it at import for its intra-op threads
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdin=subprocess.PIPE,
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


def _why(proc: subprocess.Popen, stderr: bytes, limits: Limits) -> str:
    rc = proc.returncode
    if rc == -signal.SIGXCPU or rc == -signal.SIGKILL and not stderr:
        return f"the verification used over {limits.cpu_s:,} CPU seconds or was killed (signal {-rc})"
    if rc == -signal.SIGXFSZ:
        return f"the verification tried to write over {limits.file_bytes:,} bytes"
    if rc < 0:
        return f"the verification died of signal {signal.Signals(-rc).name}"
    last = (stderr.decode("utf-8", "replace").strip().splitlines() or ["no error output"])[-1]
    if "MemoryError" in last or "memory" in last.lower():
        return (
            f"the verification ran out of its {limits.memory_bytes / 2**30:.1f} GiB memory limit ({redact(last)[:200]})"
        )
    return f"the verification exited with code {rc}: {redact(last)[:300]}"


def run_limited(
    args: list[str], *, stdin: bytes, limits: Limits, tick: Callable[[], bool] | None = None, tick_s: float = 30.0
) -> bytes:
    """The child's stdout once it exits 0; ChildFailed otherwise. `tick()` is called every `tick_s` while it
    runs (the verifier renews its lease there); when it returns False the child is killed."""
    proc = launch(args, limits)
    waited, data = 0.0, stdin
    try:
        while True:
            try:
                out, err = proc.communicate(data, timeout=min(tick_s, max(limits.wall_s - waited, 0.1)))
                break
            except subprocess.TimeoutExpired:
                data = None  # sent once; communicate keeps reading without losing output
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
