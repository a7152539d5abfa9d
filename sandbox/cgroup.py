"""A control group per sandbox: the kernel's memory and process-count limits for one process tree.

    group = create(memory_bytes=2**30, max_processes=256)   # best effort, never raises
    group.procs_files()       # the starting process writes its pid into each before it execs
    ...; group.oom_kills(), group.forks_refused(), group.kill_all(); group.remove()

A process started inside a group cannot leave it, and every process or thread it forks is counted
and charged there, so the limits hold for the whole tree however it forks. cgroup v1 (one mount per
controller, as in this project's CI containers) and cgroup v2 (one unified mount) are both read from
/proc/self/mountinfo and /proc/self/cgroup; the new group is made under the caller's own group, so
it inherits whatever limits the caller is already under. A group is named for its caller's pid, so
a later `create` kills and removes what is left of the sandboxes of a caller that died (a backstop
behind the supervisor in bwrap.py).

Creating a group needs write access to the hierarchy (root, or a delegated subtree). Where a
controller cannot be used, its field is None and the caller falls back to a watchdog; `create`
never fails a run because cgroups are unavailable.
"""

import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PREFIX = "speedrun-sandbox-"


@dataclass
class LimitGroup:
    """The group(s) one sandbox runs in: `memory` and `pids` are directories, None where unavailable."""

    version: int = 0  # 1 or 2; 0 when no group could be made
    memory: Path | None = None
    pids: Path | None = None
    why_not: list[str] = field(default_factory=list)  # one line per controller that could not be used

    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.memory, self.pids) if d is not None))

    def oom_kills(self) -> int:
        """How many processes the kernel killed for going over the memory limit."""
        if self.memory is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        return _read_key(self.memory / name, "oom_kill")

    def forks_refused(self) -> int:
        """How many forks (or thread creations) the kernel refused at the process limit."""
        if self.pids is None:
            return 0
        return _read_key(self.pids / "pids.events", "max")

    def procs_files(self) -> list[Path]:
        """Write a pid here to move that process (and all it will fork) into the group."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def members(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs():
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self, timeout_s: float = 10.0) -> bool:
        """SIGKILL every process in the group until it is empty; True once empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            members = self.members()
            if not members:
                return True
            if time.monotonic() > deadline:
                return False
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        for d in self.dirs():
            try:
                d.rmdir()
            except OSError:
                pass  # still busy or already gone: a leftover empty group costs nothing


def create(*, memory_bytes: int, max_processes: int) -> LimitGroup:
    """A new group under the caller's own, with both limits set where the hierarchy allows it."""
    mounts = _cgroup_mounts()
    own = _own_groups()
    name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    group = LimitGroup()
    if "memory" in mounts.get("v1", {}) or "pids" in mounts.get("v1", {}):
        group.version = 1
        for controller, settings in (
            ("memory", {"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes}),
            ("pids", {"pids.max": max_processes}),
        ):
            mount = mounts["v1"].get(controller)
            if mount is None:
                group.why_not.append(f"no cgroup v1 {controller} hierarchy is mounted")
                continue
            d = _make(mount, own.get(controller, "/"), name, settings, group.why_not)
            setattr(group, controller, d)
    elif "v2" in mounts:
        group.version = 2
        d = _make(
            mounts["v2"],
            own.get("", "/"),
            name,
            {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": max_processes},
            group.why_not,
            enable=("memory", "pids"),
        )
        group.memory = group.pids = d
    else:
        group.why_not.append("no cgroup hierarchy is mounted")
    return group


def _make(
    mount: Path, own: str, name: str, settings: dict[str, int], why_not: list[str], enable: tuple[str, ...] = ()
) -> Path | None:
    parent = mount / own.lstrip("/")
    d = parent / name
    _remove_stale(parent)
    try:
        if enable:  # v2: the parent must hand the controllers down to its children
            wanted = [c for c in enable if c not in (parent / "cgroup.subtree_control").read_text().split()]
            if wanted:
                (parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in wanted))
        d.mkdir()
    except OSError as e:
        why_not.append(f"cannot create a cgroup under {parent}: {e.strerror}")
        return None
    for key, value in settings.items():
        f = d / key
        if not f.exists() and key in ("memory.memsw.limit_in_bytes", "memory.swap.max"):
            continue  # swap accounting is off in this kernel: nothing to limit
        try:
            f.write_text(str(value))
        except OSError as e:
            why_not.append(f"cannot set {f}: {e.strerror}")
            d.rmdir()
            return None
    return d


def _remove_stale(parent: Path) -> None:
    """Kill and remove the groups of sandboxes whose caller died before it could (its pid is in the name)."""
    for d in parent.glob(f"{_PREFIX}*"):
        pid = d.name[len(_PREFIX) :].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale = LimitGroup(memory=d)  # which controller does not matter to kill_all and remove
            if stale.kill_all(timeout_s=2):
                stale.remove()


def _cgroup_mounts() -> dict:
    """{"v1": {controller: mount dir}, "v2": mount dir} from /proc/self/mountinfo."""
    found: dict = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        pre, _, post = line.partition(" - ")
        fields, (fstype, _source, options) = pre.split(), post.split()[:3]
        root, mount_point = fields[3], Path(fields[4])
        if root != "/":
            continue  # a bind of a sub-group (some container runtimes): our path in it is unknowable
        if fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options.split(","):
                    found.setdefault("v1", {})[controller] = mount_point
        elif fstype == "cgroup2" and {"memory", "pids"} <= set(_read(mount_point / "cgroup.controllers").split()):
            found["v2"] = mount_point
    return found


def _own_groups() -> dict[str, str]:
    """{controller: path} for cgroup v1, {"": path} for v2, from /proc/self/cgroup."""
    own = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            own[c] = path
    return own


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _read_key(path: Path, key: str) -> int:
    for line in _read(path).splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0
