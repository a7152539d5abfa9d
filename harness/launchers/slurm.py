"""The SLURM launcher: one job per seed, submitted as one job array through submitit.

    needs = track_needs("gpt2", time_min=240)
    config = SlurmConfig.from_toml("slurm.toml", partition="h100")    # flags override the file
    job_ids = submit(commands, resources=needs.resources, config=config, resume_commands=resumes)
    status(job_ids)                                                   # {"1234_0": "RUNNING", ...}

Each job runs a `CommandJob`: the seed's command line as a child process (in its own process
group), with SIGTERM forwarded to it. Preemption: SLURM sends `config.preempt_signal` (USR1 by
default) `signal_delay_s` seconds before the time limit, or someone runs `scancel --signal=USR1 JOB`;
submitit's handler calls `CommandJob.checkpoint()`, which forwards the signal to the child, waits
up to `grace_s` for it to save and exit, and returns a `DelayedSubmission` of the *resume* command
(e.g. `speedrun resume RUN_ID`); submitit then requeues the job (`scontrol requeue`) and the
requeued job runs that command. Under SLURM the child usually gets the signal directly as well
(SLURM signals every process of a job step), so it must treat a second one as the same request.

Config file (TOML), every key optional; its fields map 1:1 to `SlurmConfig`:

    partition = "h100"
    account = "my-project"
    qos = "normal"
    log_dir = "runs/slurm"
    setup = ["module load cuda/12.4", "source ~/speedrun/.venv/bin/activate"]
    preempt_signal = "USR1"
    signal_delay_s = 120
    [sbatch]                     # any other sbatch option, e.g. a GPU type
    constraint = "h100"
"""

import getpass
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from harness.launchers.track import JobResources

INSTALL_HINT = "submitit is not installed: pip install -e '.[slurm]'"


@dataclass(frozen=True)
class SlurmConfig:
    """Where and how jobs are submitted on this cluster; defaults fit a cluster with a default partition."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    log_dir: Path = Path("runs/slurm")  # submitit's pickles and each job's stdout/stderr, one folder per job
    setup: tuple[str, ...] = ()  # shell lines the batch script runs first (modules, a venv)
    preempt_signal: str = "USR1"  # the signal that means "save and stop, you will be requeued"
    signal_delay_s: int = 120  # SLURM sends preempt_signal this long before the time limit
    grace_s: float = 90.0  # how long a preempted command may take to save and exit
    python: str | None = None  # the interpreter on the compute nodes; default: this one (shared filesystem)
    sbatch: dict = field(default_factory=dict)  # other sbatch options, e.g. {"constraint": "h100"}

    @classmethod
    def from_toml(cls, path: str | Path | None = None, **overrides) -> "SlurmConfig":
        """The config file's values (if a path is given), then `overrides` that are not None (the flags)."""
        raw = tomllib.loads(Path(path).read_text()) if path else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
        values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        if "log_dir" in values:
            values["log_dir"] = Path(values["log_dir"])
        if "setup" in values:
            values["setup"] = tuple(values["setup"])
        return cls(**values)


@dataclass
class CommandJob:
    """What one SLURM job runs: `command` as a child process; requeued as `resume` when preempted."""

    command: list[str]
    resume: list[str] | None = None  # None: requeue `command` itself
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    preempt_signal: str = "USR1"
    grace_s: float = 90.0
    _child: subprocess.Popen | None = field(default=None, init=False, repr=False, compare=False)

    def __call__(self) -> int:
        env = {**os.environ, **self.env, **_node_env()}
        self._child = subprocess.Popen(self.command, cwd=self.cwd, env=env, start_new_session=True)
        # submitit only logs SIGTERM; the command is the one that must stop cleanly.
        signal.signal(signal.SIGTERM, lambda signum, _frame: self._signal_child(signum))
        returncode = self._child.wait()
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, self.command)
        return returncode

    def checkpoint(self):
        """submitit calls this from its preemption handler: stop the child, hand back the resume command."""
        from submitit.helpers import DelayedSubmission

        if self._child is not None:
            self._signal_child(getattr(signal, f"SIG{self.preempt_signal}"))
            if not self._wait_child(self.grace_s):
                print(
                    f"command still running {self.grace_s:.0f}s after SIG{self.preempt_signal}; requeuing anyway",
                    file=sys.stderr,
                )
        return DelayedSubmission(replace(self, command=self.resume or self.command))

    def _signal_child(self, signum: int) -> None:
        try:
            os.killpg(self._child.pid, signum)
        except ProcessLookupError:
            pass

    def _wait_child(self, timeout_s: float) -> bool:
        # __call__ may sit in Popen.wait() below this signal handler holding Popen's lock, so wait
        # without reaping (WNOWAIT): the child stays for Popen to collect.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, self._child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            time.sleep(0.1)
        return False


def _node_env() -> dict[str, str]:
    """Multi-node jobs (one task per node): which node this is, for torchrun's --node-rank/--rdzv-endpoint."""
    if "SUBMITIT_EXECUTOR" not in os.environ:  # called outside a submitit job (tests, a local dry run)
        return {}
    import submitit

    job = submitit.JobEnvironment()
    return {
        "SPEEDRUN_NODE_RANK": str(job.global_rank),
        "SPEEDRUN_NNODES": str(job.num_nodes),
        "SPEEDRUN_MASTER_ADDR": job.hostnames[0],
    }


def _submitit():
    try:
        import submitit
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None
    return submitit


def submit(
    commands: Sequence[Sequence[str]],
    *,
    resources: JobResources,
    config: SlurmConfig,
    resume_commands: Sequence[Sequence[str] | None] | None = None,
    job_name: str = "speedrun",
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Submit one job per command line (a job array when more than one); return the job ids, in order."""
    submitit = _submitit()
    resume_commands = list(resume_commands) if resume_commands is not None else [None] * len(commands)
    assert len(resume_commands) == len(commands), f"{len(commands)} commands but {len(resume_commands)} resumes"
    executor = submitit.SlurmExecutor(folder=config.log_dir / "%j", python=config.python)
    executor.update_parameters(
        job_name=job_name,
        partition=config.partition,
        account=config.account,
        qos=config.qos,
        nodes=resources.nodes,
        ntasks_per_node=1,
        gpus_per_node=resources.gpus_per_node or None,
        cpus_per_task=resources.cpus_per_task,
        time=resources.time_min,
        signal_delay_s=config.signal_delay_s,
        array_parallelism=len(commands),
        # The job-side submitit must listen for the same signal that SLURM sends (its default is USR2).
        setup=[f"export SUBMITIT_PREEMPT_SIGNAL={config.preempt_signal}", *config.setup],
        additional_parameters={
            "signal": f"{config.preempt_signal}@{config.signal_delay_s}",
            "requeue": True,
            **config.sbatch,
        },
    )
    cwd = str(Path(cwd or os.getcwd()).resolve())
    jobs = []
    with executor.batch():
        for command, resume in zip(commands, resume_commands, strict=True):
            job = CommandJob(
                list(command),
                list(resume) if resume else None,
                cwd=cwd,
                env=dict(env or {}),
                preempt_signal=config.preempt_signal,
                grace_s=config.grace_s,
            )
            jobs.append(executor.submit(job))
    return [job.job_id for job in jobs]


def status(job_ids: Sequence[str]) -> dict[str, str]:
    """Each job's SLURM state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...; UNKNOWN if gone).

    Live jobs come from squeue, recently finished ones from scontrol, older ones from sacct
    (which needs the cluster's accounting database).
    """
    states = {}
    live = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    for line in live.splitlines():
        job_id, _, state = line.partition("|")
        states[job_id.strip()] = state.strip()
    for record in _run(["scontrol", "-o", "show", "job"]).splitlines():
        kv = {}
        for item in record.split():  # the first KEY=VALUE wins: a later one may sit inside Command= or Comment=
            key, sep, value = item.partition("=")
            if sep:
                kv.setdefault(key, value)
        task = kv.get("ArrayTaskId", "")
        job_id = f"{kv['ArrayJobId']}_{task}" if task.isdigit() else kv.get("JobId", "")
        states.setdefault(job_id, kv.get("JobState", "UNKNOWN"))
    missing = [j for j in job_ids if j not in states]
    if missing:
        for line in _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(missing)]).splitlines():
            job_id, _, state = line.partition("|")
            states.setdefault(job_id, state.split()[0] if state else "UNKNOWN")
    return {j: states.get(j, "UNKNOWN") for j in job_ids}


def _run(argv: list[str]) -> str:
    """stdout of a SLURM client command; "" when it fails (e.g. sacct without an accounting database)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return result.stdout if result.returncode == 0 else ""
