"""The rules a plug-in must keep inside a training (or warm-up) process, checked where it runs.

    guard = Guard(threads=2, deny_reading=[val_shard], allow_writing=[run_dir])
    guard.install()                       # before the submission is imported
    hooks = load_submission(path).hooks()
    guard.after_import()                  # nothing of the frozen code or the clock was patched
    train(..., on_step_end=guard.check)   # and again at every step boundary

Checked, each refused with one line (GuardViolation, which ends the run as `invalid`):
- the frozen code and the clock stay as they were: every module-level attribute of `protocol`,
  `baseline`, `eval` and `harness` modules, every attribute of the classes they define, the `time`
  module's functions and `torch.cuda.synchronize` are compared by identity with a snapshot taken
  before the submission was imported, after the import and after every step;
- the thread count is the track's: torch.get_num_threads() is set here and checked at every step;
- no thread or process the plug-in started is alive at a step boundary (only threads alive before the
  import, and the threads and compile workers torch starts itself, are allowed): work in the
  background would run outside every timed step;
- files: reading the val and held-out shards and the eval bundle is refused (a Python audit hook on
  `open`, also `os.open`), and so is writing anywhere but the run's own directories, so a plug-in can
  neither train on what it is scored on nor leave anything behind for a later run;
- isolated (the open division's eval, harness/open_eval.py, where nothing needs either): no socket is
  opened and no process started (audit events of `socket` and of `subprocess`/`os` process calls).

Why some of this is a rule for reviewers and not only a check: an audit hook sees Python's file
opens, not a C extension's (ctypes is refused for that reason); a patch that restores itself before
the step boundary is invisible to the snapshot — the runner's own clock (protocol/timing.py) is the
check that catches a clock patched that way; the data views (baseline.dataset.write_view) already
leave the val shard out of the training process's directory. Contract: submissions/contract.py.
"""

import os
import sys
import sysconfig
import threading
import time
import types
from collections.abc import Iterable
from pathlib import Path

import psutil
import torch

from baseline.hooks import PLUGIN_MODULE_PREFIX

PROTECTED_PACKAGES = ("protocol", "baseline", "eval", "harness")
# Who may start a thread that is still alive at a step boundary: torch itself (compile workers) and
# the frozen code, judged by the first caller outside the standard library.
TRUSTED_STARTERS = ("torch", "triton", "tqdm", *PROTECTED_PACKAGES)
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_MISSING = object()
# What an isolated process may not do: the audit events of opening a socket or starting a program.
NETWORK_EVENTS = ("socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname")
PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty")


class GuardViolation(RuntimeError):
    """A plug-in broke a rule of the contract; the message is one line naming it and the fix."""


class RefusedAccess(GuardViolation, PermissionError):
    """A file the process may not read or write (raised by the audit hook where the open happens)."""


def _write_mode(args: tuple) -> bool:
    mode, flags = (args[1] if len(args) > 1 else None), (args[2] if len(args) > 2 else 0)
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool((flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))


class Guard:
    def __init__(
        self,
        *,
        threads: int | None,
        deny_reading: Iterable[str | Path] = (),
        allow_writing: Iterable[str | Path] = (),
        isolated: bool = False,
    ):
        self.threads = threads
        self.isolated = isolated
        self.deny_reading = [Path(p).resolve() for p in deny_reading]
        # /dev/shm: torch's shared-memory tensors and gloo; nothing persists there past a reboot.
        self.allow_writing = [Path(p).resolve() for p in allow_writing] + [Path(os.devnull), Path("/dev/shm")]
        self.refused: list[str] = []  # accesses refused so far: trying is breaking the rule, even if caught
        self._snapshot: dict[str, object] = {}
        self._threads_before: set[int] = set()
        self._children_before: set[int] = set()
        self.active = False

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        _mark_thread_starters()
        _hook_optimizer_steps()
        self._snapshot = self._protected()
        self._threads_before = {t.ident for t in threading.enumerate()}
        self._children_before = set(_children())
        sys.addaudithook(self._audit)  # cannot be removed: it lasts as long as the process
        self.active = True

    def _audit(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            path = Path(os.fsdecode(args[0]))
            resolved = Path(os.path.realpath(path))
            if any(resolved == p or p in resolved.parents for p in self.deny_reading):
                self._refuse(f"reading {path} was refused: the val and held-out data are the eval's, not the trainer's")
            if _write_mode(args) and not any(resolved == p or p in resolved.parents for p in self.allow_writing):
                self._refuse(f"writing {path} was refused: a training process writes only into its run directory")
        elif event == "ctypes.dlopen" or event.startswith("ctypes.dlsym"):
            if _called_from_plugin():
                self._refuse("loading native code through ctypes was refused: ship native code as a kernel")
        elif self.isolated and event in NETWORK_EVENTS:
            self._refuse(f"opening a network connection ({event}) was refused: the model's code runs offline")
        elif self.isolated and event in PROCESS_EVENTS:
            self._refuse(f"starting a process ({event}) was refused: the model's code runs in this process alone")

    def _refuse(self, message: str):
        self.refused.append(message)
        raise RefusedAccess(message)

    # ------------------------------------------------------------------ checks

    def after_import(self) -> None:
        self._compare("importing the submission")

    def check(self, step: int, where: str | None = None) -> None:
        """At a step boundary (baseline.train calls it after each step), or `where` else: every rule still holds."""
        where = where or f"step {step}"
        if self.refused:
            raise GuardViolation(f"{self.refused[0]} (before {where})")
        self._compare(where)
        if self.threads and torch.get_num_threads() != self.threads:
            raise GuardViolation(
                f"torch uses {torch.get_num_threads()} threads after {where}, the track fixes {self.threads}: "
                "a plug-in may not call torch.set_num_threads"
            )
        foreign = [
            t
            for t in threading.enumerate()
            if t.ident not in self._threads_before and getattr(t, "_speedrun_starter", None) not in TRUSTED_STARTERS
        ]
        if foreign:
            raise GuardViolation(
                f"thread {foreign[0].name!r} started by the submission is alive after {where}: work outside the "
                "timed steps is not allowed; finish it inside optimizer.step() or a kernel"
            )
        children = [p for p in _children() if p not in self._children_before and not _trusted_process(p)]
        if children:
            raise GuardViolation(
                f"process {children[0]} started by the submission is alive after {where}: work outside the "
                "timed steps is not allowed"
            )

    def _compare(self, where: str) -> None:
        changed = sorted(
            name for name, (where_, key, value) in self._snapshot.items() if where_.get(key, _MISSING) is not value
        )
        if changed:
            raise GuardViolation(
                f"{changed[0]} was replaced while {where}: a submission may not patch the clock or the frozen "
                "code; plug in through the hooks of submissions/contract.py"
            )

    def _protected(self) -> dict[str, tuple]:
        """name -> (the namespace it lives in, its key there, its value now): everything a plug-in must leave
        alone, compared later by identity (`is`; id() is an audited call, too slow for every step)."""
        out = {f"time.{k}": (vars(time), k, v) for k, v in vars(time).items() if callable(v)}
        out["threading.Thread.start"] = (vars(threading.Thread), "start", threading.Thread.start)
        for attr in ("synchronize", "Event"):
            out[f"torch.cuda.{attr}"] = (vars(torch.cuda), attr, getattr(torch.cuda, attr))
        for attr in ("set_num_threads", "get_num_threads"):
            out[f"torch.{attr}"] = (vars(torch), attr, getattr(torch, attr))
        for name, module in list(sys.modules.items()):
            if module is None or name.split(".")[0] not in PROTECTED_PACKAGES:
                continue
            namespace = vars(module)
            for attr, value in list(namespace.items()):
                out[f"{name}.{attr}"] = (namespace, attr, value)
                if isinstance(value, type) and value.__module__ == name:
                    members = vars(value)  # a mappingproxy: live, so a later patch shows
                    for member, member_value in list(members.items()):
                        out[f"{name}.{attr}.{member}"] = (members, member, member_value)
        return out


def _hook_optimizer_steps() -> None:
    """Wrap the frozen optimizers' step() now, as torch.optim does at their first construction.

    Otherwise torch's own profiling wrapper (Optimizer._patch_step_function) would show up as a
    replaced attribute the first time the trainer builds MuonAdamW, after the snapshot.
    """
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".")[0] not in PROTECTED_PACKAGES:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value.__module__ == name:
                if not getattr(value.step, "hooked", None):
                    value.step = torch.optim.Optimizer.profile_hook_step(value.step)
                    value.step.hooked = True


def _mark_thread_starters() -> None:
    """Make every thread remember who started it: the top package of the first caller outside the stdlib."""
    start = threading.Thread.start
    if getattr(start, "_speedrun_marks", False):
        return

    def marked_start(thread, *args, **kwargs):
        thread._speedrun_starter = _first_caller_package(sys._getframe(1))
        return start(thread, *args, **kwargs)

    marked_start._speedrun_marks = True
    threading.Thread.start = marked_start


def _first_caller_package(frame: types.FrameType | None) -> str | None:
    while frame is not None:
        filename = Path(frame.f_code.co_filename)
        outside = not filename.is_absolute() or not filename.resolve().is_relative_to(STDLIB)
        if outside or "site-packages" in filename.parts:
            return frame.f_globals.get("__name__", "").split(".")[0] or None
        frame = frame.f_back
    return None


def _children() -> list[int]:
    """This process's living descendants (Linux /proc/<tid>/children of every thread; cheap enough per step)."""
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _trusted_process(pid: int) -> bool:
    try:
        return any("torch._inductor" in part for part in psutil.Process(pid).cmdline())
    except psutil.Error:  # it has already gone
        return True


def _called_from_plugin() -> bool:
    """Whether a frame of the stack belongs to the submission (baseline.hooks.import_plugin's module names)."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(PLUGIN_MODULE_PREFIX):
            return True
        frame = frame.f_back
    return False
