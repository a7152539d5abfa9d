"""Run an untrusted command in a bubblewrap (bwrap) sandbox with hard limits.

    from sandbox import Limits, available, run
    if (why := available()) is not None: raise SystemExit(why)
    result = run([sys.executable, "train.py"], work_dir=run_dir, read_only=[code_dir, data_dir],
                 env={"OMP_NUM_THREADS": "4"}, limits=Limits(wall_s=3600))
    result.status   # "ok" | "failed" | "timeout" | "memory" | "processes" | "disk" | "cancelled"

The leaderboard re-runs uploaded submissions, which are arbitrary Python; this is the one place
where such code is started. Each wall, how it is enforced, and the test in tests/test_sandbox.py
that tries to get past it:

- Network: a new network namespace (bwrap --unshare-all) holds only its own loopback. The host's
  127.0.0.1 services (the database, the leaderboard) and the outside world are unreachable, there
  is no resolv.conf, and no host unix socket is bound in (do not put one in a `read_only` dir).
  Proved by test_network_is_unreachable.
- Filesystem: a fresh root holding only /usr (with the /bin, /lib* links or dirs), a few named
  files of /etc (the loader cache, alternatives, time zone; passwd, group and hosts are made up),
  the running interpreter's prefix and site-packages, each `read_only` path at its own path
  (all read-only), `work_dir` read-write at its own path, a private /tmp and /dev/shm (tmpfs, at
  most `memory_bytes` each), a new /proc of the sandbox's own processes and a minimal /dev (null,
  zero, random, ...). Nested binds: the deeper path wins, so a `read_only` dir inside `work_dir`
  stays read-only. Nothing else (other projects, /root, /home, a database's data dir, /sys) exists
  inside; writes anywhere but `work_dir`, /tmp and /dev/shm fail. Proved by
  test_writes_outside_work_dir_fail and test_unbound_host_files_are_invisible.
- Environment: the child gets only `env` on top of PATH (the interpreter's bin dir first), HOME=/tmp
  and LANG=C.UTF-8; nothing of the caller's environment (DATABASE_URL, tokens) is passed. `env`
  reaches only the command (through a file descriptor), never the host-side supervisor or bwrap.
  Proved by test_parent_environment_does_not_leak and test_sandbox_env_acts_only_inside.
- User: a new user namespace in which the command runs as uid/gid 65534 (nobody) with no
  capabilities and may not create further user namespaces (--disable-userns); setsid
  (--new-session) so it cannot push keystrokes into the caller's terminal. Needs user namespaces;
  `available()` says how to enable them where they are off. Proved by test_runs_as_nobody.
- Wall time: after `wall_s` the whole sandbox is killed (status "timeout"). Proved by
  test_wall_limit_kills_the_whole_tree.
- Memory: a cgroup memory limit of `memory_bytes` on the whole tree (tmpfs /tmp included); the
  kernel OOM-kills inside the group and run() then kills the rest (status "memory"). No RLIMIT_AS:
  PyTorch reserves far more address space than it uses. Without a usable cgroup, a watchdog sums
  the tree's resident memory every POLL_S (it can miss a spike shorter than that), and
  SandboxResult.watchdog_only says why. Proved by
  test_memory_hog_is_stopped and test_honest_torch_run_succeeds (torch under the default limits).
- Processes: a new pid namespace (the sandbox sees and signals only its own processes), a cgroup
  pids limit of `max_processes` (processes plus threads) on the tree, RLIMIT_NPROC inside (effective
  only when the caller is not root: the kernel exempts uid 0's processes), and a watchdog that
  kills the whole sandbox once a fork has been refused (status "processes"). Proved by
  test_fork_bomb_is_stopped.
- Disk: RLIMIT_FSIZE caps every file at `disk_bytes`+1 (the writer gets SIGXFSZ, or EFBIG where it
  ignores the signal, as Python does), and a watchdog sums the blocks under `work_dir` every POLL_S
  (less often for a big tree) and kills the sandbox past `disk_bytes` (status "disk"); set-uid and
  set-gid bits are stripped from what it leaves. Proved by test_disk_hog_is_stopped and
  test_setuid_bits_left_in_work_dir_are_stripped.
- Lifetime: a supervisor process on the host (the caller's child, bwrap's parent, outside the
  sandbox's reach) kills the whole sandbox when the caller dies, even in the first milliseconds
  where bwrap's own --die-with-parent is not armed yet (see _SUPERVISOR); pid 1 of the sandbox's
  namespace takes every process in it along; and run() does not return before each is gone. A
  later run() also kills what is left in the cgroups of dead callers. Proved by
  test_wall_limit_kills_the_whole_tree and test_sandbox_dies_with_its_caller.
- Cancelling: a caller's `tick()`, called every `tick_s` while the sandbox runs (renew a job's lease,
  report progress), ends it by returning False (status "cancelled"): the same kill as a limit's. Proved
  by test_a_tick_that_returns_false_cancels_the_run.
- Without bwrap (or without user namespaces) `available()` returns one line that says how to fix
  it, and run() raises it and starts nothing: test_without_bwrap_run_refuses_with_the_available_line.

What is NOT walled:
- CPU time and CPU share: a command may use every core until its wall time runs out (set
  OMP_NUM_THREADS, or run the caller under a cpu cgroup/cpuset); GPU and accelerator devices are not
  passed in at all yet.
- Side channels (timing, cache, /proc/cpuinfo and load of the host; /proc/self/mountinfo names the
  host paths bound in), the kernel's own attack surface (no seccomp filter), and reading any file
  that is bound in, read-only or not.
- The host uid: inside uid 65534 maps to the caller's uid, so files it leaves in `work_dir` belong to
  the caller. Treat them as untrusted: a symlink there may point at a host file the caller can read
  (open results with O_NOFOLLOW), and run the service as a dedicated non-root user in production.
- Disk between watchdog polls: a fast writer can pass `disk_bytes` by up to one poll's worth of
  writes (each single file stays under it), and /tmp counts against memory, not disk.
"""

import functools
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from sandbox import cgroup

POLL_S = 0.1  # watchdog period: how late a breach of a polled limit can be noticed
SANDBOX_UID = 65534  # nobody
# Named /etc files a Python program may read; all of /etc is not bound because it can hold
# secrets (shadow, ssl keys, service configs) that the sandbox's user would own on a root host.
ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "os-release",
    "mime.types",
)
# The sandbox's supervisor on the host: the caller's child, bwrap's parent. bwrap 0.8 arms
# --die-with-parent in the namespace's pid 1 only after its set-up, so a caller that dies in the
# first ~50 ms would leave the sandbox running (tests/test_sandbox.py saw it). The supervisor closes
# that gap: it moves itself into the limit groups before any fork, gets SIGTERM when the caller
# dies (checked once after arming, for a caller that died before), and is a child subreaper, so
# whatever bwrap orphans comes back to it; on SIGTERM, or once bwrap exits, it kills and reaps
# every child until none is left. The sandbox cannot see or signal it (another pid namespace).
_SUPERVISOR = """\
import ctypes, os, signal, sys
caller, n_groups = int(sys.argv[1]), int(sys.argv[2])
argv = sys.argv[3 + n_groups :]
libc = ctypes.CDLL(None)

def children():
    me, found = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    found.append(int(pid))
        except OSError:
            pass
    return found

def kill_all(code):
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.wait()
        except ChildProcessError:
            os._exit(code)

signal.signal(signal.SIGTERM, lambda *_: kill_all(128 + signal.SIGKILL))
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != caller:
    os._exit(125)
for procs in sys.argv[3 : 3 + n_groups]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
bwrap = os.fork()
if bwrap == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
status = os.waitpid(bwrap, 0)[1]
kill_all(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""
# Runs inside the sandbox and execs the command. RLIMIT_NPROC counts per (user namespace, uid), so
# here it counts the sandbox's own processes only; RLIMIT_FSIZE and RLIMIT_CORE are per process.
# The command's environment comes in on a file descriptor, not through bwrap's environment, so
# that nothing a caller passes for the sandbox (LD_PRELOAD, say) acts on the host-side processes.
_LAUNCHER = """\
import os, resource, signal, sys
nproc, fsize, env_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with os.fdopen(env_fd, "rb") as f:
    env = dict(item.decode().split("=", 1) for item in f.read().split(b"\\0") if item)
for name in ("SIGPIPE", "SIGXFSZ"):  # Python ignores these, and an ignored signal stays ignored across exec
    signal.signal(getattr(signal, name), signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
try:
    os.execvpe(sys.argv[4], sys.argv[4:], env)
except OSError as e:
    print(f"sandbox: cannot run {sys.argv[4]!r}: {e.strerror}", file=sys.stderr)
    sys.exit(127)
"""


@dataclass(frozen=True)
class Limits:
    """Hard limits for one sandboxed run. The defaults fit `import torch` and a small CPU run."""

    wall_s: float = 3600.0
    memory_bytes: int = 16 * 2**30
    # processes and threads, the sandbox's own 3 included (supervisor, bwrap, bwrap's pid 1);
    # torch starts a thread per core
    max_processes: int = 1024
    disk_bytes: int = 10 * 2**30  # under work_dir


@dataclass
class SandboxResult:
    """How a sandboxed run ended. `status`: "ok", "failed" (non-zero exit) or the limit it hit."""

    returncode: int | None  # as a shell reports it (128+N for signal N); None when run() killed it
    status: str  # "ok" | "failed" | "timeout" | "memory" | "processes" | "disk" | "cancelled"
    wall_s: float
    reason: str | None = None  # one line for every status but "ok"
    # why a memory or process limit was left to the polling watchdog (no usable cgroup); empty when
    # the kernel enforced both
    watchdog_only: list[str] = field(default_factory=list)


@functools.cache
def available() -> str | None:
    """None if sandboxes can run here; otherwise one line that says why and how to fix it."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    probe = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--ro-bind",
        "/usr",
        "/usr",
        *_system_dirs(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--die-with-parent",
        "--",
        "true",
    ]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30, env={})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start a sandbox ({e}): check that {bwrap} runs"
    if done.returncode != 0:
        err = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return (
            f"bwrap cannot create user namespaces here ({err}): enable them with "
            "sysctl user.max_user_namespaces=10000 kernel.unprivileged_userns_clone=1 "
            "(Ubuntu 24.04: kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    return None


def run(
    cmd: Sequence[str],
    *,
    work_dir: Path,
    read_only: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    limits: Limits = Limits(),
    cwd: Path | None = None,
    stdin=None,
    stdout=None,
    stderr=None,
    tick: Callable[[], bool] | None = None,
    tick_s: float = 30.0,
) -> SandboxResult:
    """Run `cmd` in a sandbox (see the module docstring) and wait for it, limits enforced.

    read_only: the code and data the command needs (an editable install's source dir too: only
    site-packages is bound, not what its .pth files point at).
    stdin: None (nothing: /dev/null), a file descriptor or an open file (a pipe's read end, for a
    process that serves requests); not PIPE.
    stdout/stderr: None (inherit), subprocess.DEVNULL, a file descriptor or an open file; not PIPE.
    tick: called every `tick_s` seconds while the command runs; returning False kills it ("cancelled").
    """
    why = available()
    if why is not None:
        raise RuntimeError(why)
    if subprocess.PIPE in (stdin, stdout, stderr):
        raise ValueError("sandbox run() does not take subprocess.PIPE: pass an open file (or None to inherit)")
    if not cmd:
        raise ValueError("empty command: pass the program and its arguments, e.g. [sys.executable, 'x.py']")
    work_dir = Path(work_dir).resolve()
    if not work_dir.is_dir():
        raise FileNotFoundError(f"sandbox work_dir {work_dir} is not a directory: create it before run()")
    for p in read_only:
        if not Path(p).exists():
            raise FileNotFoundError(f"sandbox read_only path {p} does not exist: pass existing paths only")
    path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    child_env = {"PATH": path, "HOME": "/tmp", "LANG": "C.UTF-8", **(env or {})}
    if any("=" in k or "\0" in k + v for k, v in child_env.items()):
        raise ValueError("sandbox env names may not hold '=' and no name or value may hold a NUL byte")

    data_fds = []  # bwrap copies these into made-up /etc files; the last holds the command's env
    argv = [
        shutil.which("bwrap"),
        *_namespace_args(),
        *_mount_args(work_dir, read_only, limits, data_fds),
        "--chdir",
        str(Path(cwd).resolve() if cwd else work_dir),
        "--",
        sys.executable,
        "-I",
        "-S",
        "-c",
        _LAUNCHER,
        str(limits.max_processes),
        # one byte over the limit, so a file stopped by it ends over the limit and the watchdog sees it
        str(limits.disk_bytes + 1),
        str(_data_fd("\0".join(f"{k}={v}" for k, v in child_env.items()), data_fds)),
        *cmd,
    ]
    group = cgroup.create(memory_bytes=limits.memory_bytes, max_processes=limits.max_processes)
    start = time.monotonic()
    proc = None
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                _SUPERVISOR,
                str(os.getpid()),
                str(len(group.procs_files())),
                *map(str, group.procs_files()),
                *argv,
            ],
            env={"PATH": path, "LANG": "C.UTF-8"},
            cwd="/",
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=data_fds,
            start_new_session=True,
        )
        for fd in data_fds:
            os.close(fd)
        data_fds.clear()
        status, reason, returncode = _watch(proc, group, work_dir, limits, start, tick, tick_s)
    finally:
        for fd in data_fds:
            os.close(fd)
        if proc is not None:
            _kill(proc, group)
        group.remove()
    _strip_setid_bits(work_dir)
    return SandboxResult(
        returncode=returncode,
        status=status,
        wall_s=time.monotonic() - start,
        reason=reason,
        watchdog_only=group.why_not,
    )


def _watch(
    proc: subprocess.Popen,
    group: cgroup.LimitGroup,
    work_dir: Path,
    limits: Limits,
    start: float,
    tick: Callable[[], bool] | None,
    tick_s: float,
) -> tuple[str, str | None, int | None]:
    """Wait for the sandbox, killing it at the first breached limit or refused tick: (status, reason, returncode)."""
    next_disk_check, next_tick, returncode = 0.0, start + tick_s, None
    while True:
        try:
            returncode = proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if returncode is None and now - start > limits.wall_s:
            return "timeout", f"killed after the wall-time limit of {limits.wall_s:g} s", None
        if returncode is None and tick is not None and now >= next_tick:
            next_tick = now + tick_s
            if not tick():
                return "cancelled", "cancelled by its caller (tick returned False)", None
        breach = _breached(proc, group, limits)
        if breach is None and (returncode is not None or now >= next_disk_check):
            used = _disk_usage(work_dir)
            next_disk_check = now + max(POLL_S, 10 * (time.monotonic() - now))  # a big tree: poll it less
            if used > limits.disk_bytes:
                breach = "disk", f"{used} bytes under work_dir, over the disk limit of {limits.disk_bytes}"
        if breach is None and returncode == 128 + signal.SIGXFSZ:
            breach = "disk", f"a file grew past the per-file limit of {limits.disk_bytes} bytes (SIGXFSZ)"
        if breach is not None:
            return *breach, returncode
        if returncode is not None:
            if returncode == 0:
                return "ok", None, 0
            return "failed", f"the command exited with status {returncode}", returncode


def _breached(proc: subprocess.Popen, group: cgroup.LimitGroup, limits: Limits) -> tuple[str, str] | None:
    if group.oom_kills():
        return "memory", f"the kernel killed a process over the memory limit of {limits.memory_bytes} bytes"
    if group.forks_refused():
        return "processes", f"a fork was refused at the limit of {limits.max_processes} processes and threads"
    if group.memory is not None and group.pids is not None:
        return None
    tree = _tree(proc.pid)  # watchdog for what no cgroup could limit
    if group.memory is None:
        rss = sum(_rss(p) for p in tree)
        if rss > limits.memory_bytes:
            return "memory", f"{rss} bytes resident, over the memory limit of {limits.memory_bytes}"
    if group.pids is None:
        threads = sum(_threads(p) for p in tree)
        if threads > limits.max_processes:
            return "processes", f"{threads} processes and threads, over the limit of {limits.max_processes}"
    return None


def _kill(proc: subprocess.Popen, group: cgroup.LimitGroup) -> None:
    """Kill the sandbox and wait until none of its processes is left."""
    tree = _tree(proc.pid)
    if proc.poll() is None:
        proc.terminate()  # the supervisor kills and reaps all it has
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    group.kill_all()
    # A killed process stays a zombie until the host's init reaps it (the namespace's pid 1, its
    # parent, is gone); it holds nothing but its pid, so it counts as gone.
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.01)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def _threads(p: psutil.Process) -> int:
    try:
        return p.num_threads()
    except psutil.Error:
        return 0


def _namespace_args() -> list[str]:
    uid = str(SANDBOX_UID)
    return [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid",
        uid,
        "--gid",
        uid,
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
    ]


def _system_dirs() -> list[str]:
    """/bin, /sbin and /lib* as the host has them: symlinks into /usr (merged /usr) or read-only dirs."""
    args = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    return args


def _interpreter_dirs() -> list[Path]:
    """The running interpreter's prefixes and site-packages, without those /usr already holds."""
    dirs = {
        Path(d)
        for d in (
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
            Path(sys.executable).resolve().parent.parent,
            *site.getsitepackages(),
        )
    }
    dirs = {d for d in dirs if d.exists() and not d.is_relative_to("/usr")}
    return sorted(d for d in dirs if not any(d != o and d.is_relative_to(o) for o in dirs))


def _mount_args(work_dir: Path, read_only: Sequence[Path], limits: Limits, data_fds: list[int]) -> list[str]:
    binds = [("--ro-bind", d) for d in _interpreter_dirs()]
    binds += [("--ro-bind", Path(p).resolve()) for p in read_only]
    binds.append(("--bind", work_dir))
    # bwrap mounts in order, so a deeper path must come after the one it sits in to stay visible
    binds.sort(key=lambda b: len(b[1].parts))
    args = ["--ro-bind", "/usr", "/usr", *_system_dirs()]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    made_up = {
        "/etc/passwd": f"root:x:0:0:root:/root:/bin/sh\nnobody:x:{SANDBOX_UID}:{SANDBOX_UID}:nobody:/tmp:/bin/sh\n",
        "/etc/group": f"root:x:0:\nnogroup:x:{SANDBOX_UID}:\n",
        "/etc/hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }
    for dest, text in made_up.items():
        args += ["--ro-bind-data", str(_data_fd(text, data_fds)), dest]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for tmp in ("/tmp", "/dev/shm"):
        args += ["--size", str(limits.memory_bytes), "--tmpfs", tmp]
    for flag, path in binds:
        args += [flag, str(path), str(path)]
    # bwrap's root and /dev are tmpfs it made writable to create the mount points: now seal them
    # (device nodes such as /dev/null stay writable on a read-only mount)
    return args + ["--remount-ro", "/dev", "--remount-ro", "/"]


def _data_fd(text: str, data_fds: list[int]) -> int:
    """A file descriptor to read `text` from (an in-memory file, so any size fits), kept in data_fds."""
    fd = os.memfd_create("sandbox-data")
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    data_fds.append(fd)
    return fd


def _disk_usage(root: Path) -> int:
    """Bytes of disk under `root` (blocks, each hard-linked inode once, symlinks not followed)."""
    return _walk(root, strip_setid=False)


def _strip_setid_bits(root: Path) -> None:
    """Drop set-uid/set-gid bits the sandbox set on files it leaves: they would run as the caller."""
    _walk(root, strip_setid=True)


def _walk(root: Path, *, strip_setid: bool) -> int:
    total, seen, stack = 0, set(), [str(root)]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except PermissionError:
            # the sandbox may chmod a dir it made to 000; it is the caller's, so open it back up
            try:
                os.chmod(top, 0o700)
                entries = list(os.scandir(top))
            except OSError:
                continue
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif strip_setid and stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                try:
                    os.chmod(entry.path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                except OSError:
                    pass  # not the caller's to change: it cannot run as the caller either
    return total
