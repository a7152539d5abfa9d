"""The sandbox's walls: each test tries to get past one and shows that it was refused.

Every bomb here is bounded twice (the limit under test, and a loop bound or wall time of its own),
so a broken wall fails its test instead of taking the machine down. Skips where bwrap cannot run.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from sandbox import Limits, available, run
from sandbox import bwrap as sandbox_bwrap

MiB = 2**20


@pytest.fixture
def work_dir(tmp_path) -> Path:
    """The sandbox's read-write dir; every test that starts a sandbox takes it, so they skip without bwrap."""
    if available() is not None:
        pytest.skip(available())
    d = tmp_path / "work"
    d.mkdir()
    return d


def run_py(code: str, work_dir: Path, **kwargs):
    """Run Python `code` in the sandbox; (result, what it printed)."""
    out = work_dir.parent / f"out-{uuid.uuid4().hex[:6]}.txt"  # outside work_dir: the sandbox cannot touch it
    with open(out, "wb") as f:
        result = run([sys.executable, "-c", textwrap.dedent(code)], work_dir=work_dir, stdout=f, stderr=f, **kwargs)
    return result, out.read_text()


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def test_network_is_unreachable(work_dir):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the listener is reachable from the host: the refusal below is the sandbox's doing
    listener.accept()[0].close()
    result, out = run_py(
        f"""
        import json, socket
        tried = {{}}
        for name, addr in {{"host_loopback": ("127.0.0.1", {port}), "outside": ("1.1.1.1", 53)}}.items():
            try:
                socket.create_connection(addr, timeout=3).close()
                tried[name] = "connected"
            except OSError as e:
                tried[name] = type(e).__name__
        try:
            tried["dns"] = socket.getaddrinfo("example.com", 443)[0][4][0]
        except OSError as e:
            tried["dns"] = type(e).__name__
        print(json.dumps(tried))
    """,
        work_dir,
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok", out
    tried = json.loads(out)
    assert tried == {"host_loopback": "ConnectionRefusedError", "outside": "OSError", "dns": "gaierror"}, tried
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing from inside ever arrived
    listener.close()


def test_writes_outside_work_dir_fail(work_dir, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("original")
    protected = work_dir / "submission"  # read-only inside the read-write work_dir: the deeper bind wins
    protected.mkdir()
    (protected / "train.py").write_text("original")
    unbound = tmp_path / "unbound"
    unbound.mkdir()
    targets = [
        shared / "data.txt",
        shared / "new.txt",
        protected / "train.py",
        unbound / "new.txt",
        Path(sys.prefix) / "new.txt",
        Path("/usr/new.txt"),
        Path("/etc/passwd"),
        Path("/new.txt"),
    ]
    result, out = run_py(
        f"""
        import json
        refused = {{}}
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "a") as f:
                    f.write("tampered")
                refused[path] = None
            except OSError as e:
                refused[path] = e.strerror
        open("result.txt", "w").write("written inside work_dir")
        print(json.dumps(refused))
    """,
        work_dir,
        read_only=[shared, protected],
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok", out
    refused = json.loads(out)
    assert all(refused.values()), f"writes that got through: {[p for p, e in refused.items() if not e]}"
    assert (shared / "data.txt").read_text() == "original" and not (shared / "new.txt").exists()
    assert (protected / "train.py").read_text() == "original"
    assert list(unbound.iterdir()) == []
    assert (work_dir / "result.txt").read_text() == "written inside work_dir"


def test_unbound_host_files_are_invisible(work_dir, tmp_path):
    secret = tmp_path / "storage" / "token.txt"  # e.g. the leaderboard's storage or database dir
    secret.parent.mkdir()
    secret.write_text("hunter2")
    repo = Path(__file__).resolve().parents[1]
    home = Path.home() / ".bashrc"
    probes = [
        secret,
        secret.parent,
        repo / "pyproject.toml",
        home,
        Path("/etc/shadow"),
        Path("/etc/hostname"),
        Path("/sys/class"),
        Path("/var"),
        Path("/home"),
    ]
    result, out = run_py(
        f"""
        import json, os
        print(json.dumps({{p: os.path.exists(p) for p in {[str(p) for p in probes]!r}}}))
    """,
        work_dir,
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok", out
    visible = [p for p, seen in json.loads(out).items() if seen]
    assert visible == [], f"host paths visible inside the sandbox: {visible}"


def test_setuid_bits_left_in_work_dir_are_stripped(work_dir):
    result, out = run_py(
        """
        import os, shutil
        shutil.copy("/bin/sh", "rootshell")
        os.chmod("rootshell", 0o6755)  # owned by the caller on the host: set-uid would run as the caller
        print(oct(os.stat("rootshell").st_mode & 0o7777))
        """,
        work_dir,
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok" and out.strip() == "0o6755", (result, out)
    assert (work_dir / "rootshell").stat().st_mode & 0o7777 == 0o755


def test_parent_environment_does_not_leak(work_dir, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://speedrun:secret@127.0.0.1/speedrun")
    monkeypatch.setenv("LEADERBOARD_ADMIN_TOKEN", "secret-token")
    result, out = run_py(
        """
        import json, os
        print(json.dumps(dict(os.environ)))
    """,
        work_dir,
        env={"SEED": "7"},
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok", out
    seen = json.loads(out)
    assert "secret" not in out and "DATABASE_URL" not in seen and "LEADERBOARD_ADMIN_TOKEN" not in seen
    assert seen["SEED"] == "7"
    assert set(seen) <= {"SEED", "PATH", "HOME", "LANG", "PWD"}, seen


def test_sandbox_env_acts_only_inside(work_dir):
    # a preload named in `env` (say, copied from a submission's settings) must not load into the
    # host-side supervisor or bwrap: the loader complains once per process that tries
    result, out = run_py("pass", work_dir, env={"LD_PRELOAD": "/nonexistent/preload.so"}, limits=Limits(wall_s=30))
    assert result.status == "ok", out
    assert out.count("cannot be preloaded") == 1, out


def test_stdin_is_nothing_unless_a_pipe_is_given(work_dir):
    result, out = run_py("import sys; print(repr(sys.stdin.read()))", work_dir, limits=Limits(wall_s=30))
    assert result.status == "ok" and out.strip() == "''", out
    read, write = os.pipe()
    os.write(write, b"token ids")
    os.close(write)
    try:
        result, out = run_py("import sys; print(sys.stdin.read())", work_dir, stdin=read, limits=Limits(wall_s=30))
    finally:
        os.close(read)
    assert result.status == "ok" and out.strip() == "token ids", out


def test_runs_as_nobody(work_dir):
    result, out = run_py(
        """
        import json, os
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "cap_eff": status["CapEff"].strip(),
                          "pids": [int(p) for p in os.listdir("/proc") if p.isdigit()]}))
    """,
        work_dir,
        limits=Limits(wall_s=30),
    )
    assert result.status == "ok", out
    seen = json.loads(out)
    assert (seen["uid"], seen["gid"]) == (65534, 65534)
    assert int(seen["cap_eff"], 16) == 0, "the sandboxed process holds capabilities"
    assert len(seen["pids"]) <= 3, f"host processes visible: {seen['pids']}"  # bwrap's init, itself, maybe /proc reader


def test_fork_bomb_is_stopped(work_dir):
    marker = f"forkbomb-{uuid.uuid4().hex[:8]}"
    # doubles at each level, every process staying alive; 7 levels (~380 processes: 254 subshells and
    # 128 sleeps) bound it even if the limit of 32 failed
    bomb = "bomb() { if [ $1 -lt 7 ]; then bomb $(($1 + 1)) | bomb $(($1 + 1)); else sleep 20; fi; }; bomb 0"
    start = time.monotonic()
    result = run(
        ["/bin/bash", "-c", f"{bomb} # {marker}"],
        work_dir=work_dir,
        limits=Limits(max_processes=32, wall_s=20),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert result.status == "processes", result
    assert time.monotonic() - start < 10, f"the bomb ran {time.monotonic() - start:.1f} s before it was stopped"
    assert processes_with(marker) == [], "fork bomb processes survived the sandbox"
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_memory_hog_is_stopped(work_dir):
    # 16 MiB at a time, never more than 2 GiB even if the limit failed
    result, out = run_py(
        """
        hog = []
        for _ in range(128):
            hog.append(b"x" * (16 << 20))
        print("allocated 2 GiB")
    """,
        work_dir,
        limits=Limits(memory_bytes=256 * MiB, wall_s=30),
    )
    assert result.status == "memory", (result, out)
    assert "allocated" not in out


def test_wall_limit_kills_the_whole_tree(work_dir):
    marker = f"sleeper-{uuid.uuid4().hex[:8]}"
    result, out = run_py(
        f"""
        import subprocess, sys, time
        # a grandchild in its own session, as a submission might leave behind on purpose
        sleeper = "import pathlib, time; pathlib.Path('grandchild.started').touch(); time.sleep(300)"
        subprocess.Popen([sys.executable, "-c", sleeper, "{marker}"], start_new_session=True)
        time.sleep(300)
    """,
        work_dir,
        limits=Limits(wall_s=1.5),
    )
    assert (result.status, result.returncode) == ("timeout", None), (result, out)
    assert (work_dir / "grandchild.started").exists(), "the grandchild never started: nothing was tested"
    assert 1.5 <= result.wall_s < 6, result
    assert processes_with(marker) == [], "a sandboxed process outlived its wall-time kill"


def test_a_tick_that_returns_false_cancels_the_run(work_dir):
    marker = f"cancelled-{uuid.uuid4().hex[:8]}"
    ticks = []

    def tick() -> bool:  # a job's lease renewal: the second one finds the lease lost
        ticks.append(time.monotonic())
        return len(ticks) < 2

    result = run(
        [sys.executable, "-c", "import time; time.sleep(300)", marker],
        work_dir=work_dir,
        limits=Limits(wall_s=60),
        tick=tick,
        tick_s=0.5,
    )
    assert (result.status, result.returncode) == ("cancelled", None), result
    assert len(ticks) == 2 and result.wall_s < 10, result
    assert processes_with(marker) == [], "a cancelled sandbox left a process behind"


def test_sandbox_dies_with_its_caller(work_dir):
    marker = f"orphan-{uuid.uuid4().hex[:8]}"
    # the marker reaches the caller through its environment, so only the sandboxed sleeper shows it
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from sandbox import run
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)", os.environ["MARKER"]]
        run(sleeper, work_dir=Path({str(work_dir)!r}))
    """),
        ],
        env={**os.environ, "MARKER": marker, "PYTHONPATH": str(Path(sandbox_bwrap.__file__).parents[1])},
    )
    deadline = time.monotonic() + 20
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker), "the sandboxed sleeper never started"
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == [], "the sandbox outlived its killed caller"


@pytest.mark.parametrize("writer", ["python_one_file", "shell_one_file", "python_many_files"])
def test_disk_hog_is_stopped(work_dir, writer):
    limit = 20 * MiB
    cmd = {  # each bounded at 200 MiB even if the limit failed
        "python_one_file": [sys.executable, "-c", "f = open('big', 'wb')\nfor _ in range(200): f.write(b'x' * 2**20)"],
        "shell_one_file": ["/bin/sh", "-c", "head -c 200M /dev/zero > big"],
        "python_many_files": [
            sys.executable,
            "-c",
            "import time\nfor i in range(200):\n    open(f'part{i}', 'wb').write(b'x' * 2**20); time.sleep(0.01)",
        ],
    }[writer]
    result = run(
        cmd,
        work_dir=work_dir,
        limits=Limits(disk_bytes=limit, wall_s=30),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert result.status == "disk", result
    written = sum(f.stat().st_size for f in work_dir.iterdir())
    assert all(f.stat().st_size <= limit + 1 for f in work_dir.iterdir())
    assert written < 100 * MiB, f"{written} bytes written before the disk limit of {limit} stopped it"


def test_honest_torch_run_succeeds(work_dir, tmp_path):
    code = tmp_path / "submission"
    code.mkdir()
    (code / "train.py").write_text(
        textwrap.dedent("""
        import json, os, torch
        x = torch.ones(10)
        json.dump({"sum": float(x.sum()), "threads": torch.get_num_threads()}, open("result.json", "w"))
    """)
    )
    with open(tmp_path / "log.txt", "wb") as log:
        result = run(
            [sys.executable, str(code / "train.py")],
            work_dir=work_dir,
            read_only=[code],
            env={"OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=log,
        )  # the default limits
    assert result.status == "ok" and result.returncode == 0, (result, (tmp_path / "log.txt").read_text())
    assert json.loads((work_dir / "result.json").read_text()) == {"sum": 10.0, "threads": 1}


def test_without_bwrap_run_refuses_with_the_available_line(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    available.cache_clear()
    try:
        why = available()
        assert why == "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
        with pytest.raises(RuntimeError, match="bubblewrap"):
            run(["touch", str(tmp_path / "ran")], work_dir=tmp_path)
        assert not (tmp_path / "ran").exists()
    finally:
        monkeypatch.undo()
        available.cache_clear()
