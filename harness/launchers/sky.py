"""The SkyPilot launcher: one managed job per seed on a cloud, built with SkyPilot's Python API.

    needs = track_needs("gpt2")
    config = SkyConfig.from_toml("sky.toml", use_spot=True)          # flags override the file
    tasks = build_tasks(commands, needs=needs, config=config, resume_commands=resumes)
    check_task(tasks[0])                                              # offline: SkyPilot's own schema
    job_ids = launch(tasks)                                           # sky.jobs.launch, one per seed

A task is: the track's machine (`8x H100` for gpt2, `2+ CPUs` for cpu-books), spot or on-demand
(a spot job that loses its machine is relaunched by SkyPilot's controller); setup that installs
this project (from the synced working tree, so a local submission travels with it, or from git)
into a Python 3.11 venv and puts the track's shards in `DATA_DIR` (`speedrun data download` for
ClimbMix; a local corpus such as cpu-books' is uploaded as a file mount; or a bucket you name is
mounted there); and the seed's command line. With a resume command and a `runs_bucket` (mounted
at `RUNS_DIR`, so checkpoints outlive the machine) a relaunched job runs the resume command.

No credentials ever go into a task: SkyPilot reads the cloud's own (`sky check`; add your cloud's
extra, e.g. `pip install 'skypilot[aws]==0.9.3'`). Config file
(TOML), every key optional, fields 1:1 with `SkyConfig`:

    use_spot = true
    cloud = "aws"
    region = "us-east-1"
    runs_bucket = "s3://my-speedrun-runs"
"""

import copy
import shlex
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from harness.launchers.track import TrackNeeds
from protocol.paths import REPO

INSTALL_HINT = "skypilot is not installed: pip install -e '.[sky]'"
ROOT = "/speedrun"  # on the cloud machine
DATA_DIR = f"{ROOT}/data"  # the track's shards: pass `--data-dir DATA_DIR` in the commands
RUNS_DIR = f"{ROOT}/runs"  # a mounted bucket when runs_bucket is set: pass `--runs-dir RUNS_DIR`
VENV = "~/speedrun-venv"
RESOURCE_FIELDS = ("cloud", "region", "accelerators", "cpus", "use_spot", "job_recovery", "disk_size")


@dataclass(frozen=True)
class SkyConfig:
    """Where the machines come from and how the code and data get there; defaults: on-demand, any cloud."""

    use_spot: bool = False
    cloud: str | None = None  # e.g. "aws", "gcp", "lambda"; None lets SkyPilot choose the cheapest enabled one
    region: str | None = None
    disk_size_gb: int = 256
    workdir: Path | None = REPO  # synced to the machine (honours .gitignore); None: clone git_url instead
    git_url: str | None = None
    git_ref: str = "main"
    python: str = "3.11"
    data_bucket: str | None = None  # e.g. "s3://my-shards": mounted at DATA_DIR instead of downloading
    runs_bucket: str | None = None  # e.g. "s3://my-runs": mounted at RUNS_DIR, so a relaunched job can resume
    max_restarts_on_errors: int = 0  # relaunches after the command itself failed (preemptions are always)
    setup: tuple[str, ...] = ()  # more setup lines, after the install and the data

    @classmethod
    def from_toml(cls, path: str | Path | None = None, **overrides) -> "SkyConfig":
        """The config file's values (if a path is given), then `overrides` that are not None (the flags)."""
        raw = tomllib.loads(Path(path).read_text()) if path else {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
        values = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        if values.get("workdir") is not None:
            values["workdir"] = Path(values["workdir"])
        if "setup" in values:
            values["setup"] = tuple(values["setup"])
        return cls(**values)


def _sky():
    try:
        import sky
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None
    return sky


def setup_script(needs: TrackNeeds, config: SkyConfig) -> str:
    """Install the project into a venv, then put the track's shards in DATA_DIR (runs once per machine)."""
    lines = ["set -eo pipefail"]
    if config.workdir is None:
        assert config.git_url, "SkyConfig needs a workdir to sync or a git_url to clone"
        lines += [
            f"[ -d speedrun ] || git clone {shlex.quote(config.git_url)} speedrun",
            f"cd speedrun && git fetch -q origin && git checkout -q {shlex.quote(config.git_ref)}",
        ]
    lines += [
        "python3 -m pip install -q uv",
        f"[ -d {VENV} ] || python3 -m uv venv -q --python {config.python} {VENV}",
        f". {VENV}/bin/activate",
        "python3 -m uv pip install -q -e .",
        f"sudo mkdir -p {ROOT} && sudo chown $(id -u):$(id -g) {ROOT} && mkdir -p {DATA_DIR} {RUNS_DIR}",
    ]
    if needs.data.source == "climbmix" and config.data_bucket is None:
        lines.append(f"speedrun data download --num-shards {needs.data.num_train_shards} --data-dir {DATA_DIR}")
    return "\n".join([*lines, *config.setup])


def run_script(command: Sequence[str], resume: Sequence[str] | None, *, name: str, config: SkyConfig) -> str:
    """The seed's command; with a resume command, a relaunch (the marker survives in RUNS_DIR) resumes instead."""
    lines = ["set -eo pipefail"]
    if config.workdir is None:
        lines.append("cd speedrun")
    lines.append(f". {VENV}/bin/activate")
    # The same names as under SLURM (launchers/slurm.py), for torchrun's --node-rank and --rdzv-endpoint
    lines.append(
        "export SPEEDRUN_NODE_RANK=$SKYPILOT_NODE_RANK SPEEDRUN_NNODES=$SKYPILOT_NUM_NODES "
        'SPEEDRUN_MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)'
    )
    if resume:
        marker = shlex.quote(f"{RUNS_DIR}/.launched-{name}")
        lines += [f"if [ -e {marker} ]; then exec {shlex.join(resume)}; fi", f"touch {marker}"]
    lines.append(f"exec {shlex.join(command)}")
    return "\n".join(lines)


def build_tasks(
    commands: Sequence[Sequence[str]],
    *,
    needs: TrackNeeds,
    config: SkyConfig,
    resume_commands: Sequence[Sequence[str] | None] | None = None,
    name: str = "speedrun",
    envs: dict[str, str] | None = None,
) -> list:
    """One `sky.Task` per command line (seed), named `{name}-{i}`; nothing is launched."""
    sky = _sky()
    resume_commands = list(resume_commands) if resume_commands is not None else [None] * len(commands)
    assert len(resume_commands) == len(commands), f"{len(commands)} commands but {len(resume_commands)} resumes"
    res = needs.resources
    resources = sky.Resources(
        cloud=sky.CLOUD_REGISTRY.from_str(config.cloud) if config.cloud else None,
        region=config.region,
        accelerators={res.gpu_model: res.gpus_per_node} if res.gpus_per_node else None,
        cpus=f"{res.cpus_per_task}+",
        use_spot=config.use_spot,
        # Managed jobs relaunch a preempted spot machine; FAILOVER tries the same region first.
        job_recovery={"strategy": "FAILOVER", "max_restarts_on_errors": config.max_restarts_on_errors},
        disk_size=config.disk_size_gb,
    )
    file_mounts, storage_mounts = {}, {}
    if config.data_bucket:
        storage_mounts[DATA_DIR] = sky.Storage(source=config.data_bucket, mode=sky.StorageMode.MOUNT)
    elif needs.data.source != "climbmix":
        assert needs.data.local_dir, f"track {needs.track} names no local data folder to upload"
        file_mounts[DATA_DIR] = str(needs.data.local_dir)
    if config.runs_bucket:
        # MOUNT_CACHED: checkpoints are written locally and uploaded behind, safe for random writes
        storage_mounts[RUNS_DIR] = sky.Storage(source=config.runs_bucket, mode=sky.StorageMode.MOUNT_CACHED)
    setup = setup_script(needs, config)
    tasks = []
    for i, (command, resume) in enumerate(zip(commands, resume_commands, strict=True)):
        task_name = f"{name}-{i}"
        task = sky.Task(
            name=task_name,
            setup=setup,
            run=run_script(command, resume, name=task_name, config=config),
            envs=dict(envs or {}),
            workdir=str(config.workdir) if config.workdir else None,
            num_nodes=res.nodes,
        )
        task.set_resources(resources)
        task.set_file_mounts(file_mounts or None)
        task.set_storage_mounts(storage_mounts or None)
        tasks.append(task)
    return tasks


def check_task(task, *, online: bool = False):
    """SkyPilot's own checks without a cloud; returns the task as SkyPilot reads it back.

    Name, run, workdir and file mounts are validated; then the task goes through its YAML form
    (`to_yaml_config` -> `from_yaml_config`, which validates the schema) and must come back with the
    same commands, mounts and resources. `online=True` also checks the resources against the
    clouds' catalogs (downloaded), as `sky.jobs.launch` does anyway.
    """
    sky = _sky()
    task.validate_name()
    task.validate_run()
    task.expand_and_validate_workdir()
    task.expand_and_validate_file_mounts()
    back = sky.Task.from_yaml_config(copy.deepcopy(task.to_yaml_config()))  # it consumes its argument
    assert _essentials(back) == _essentials(task), f"task {task.name} does not survive SkyPilot's YAML round trip"
    if online:
        task.validate()
    return back


def _essentials(task) -> dict:
    # Field by field: SkyPilot versions differ in which defaults to_yaml_config writes out.
    resources = [{k: getattr(r, k) for k in RESOURCE_FIELDS} for r in task.resources]
    mounts = {path: (s.source, s.mode) for path, s in (task.storage_mounts or {}).items()}
    return dict(
        name=task.name,
        setup=task.setup,
        run=task.run,
        envs=task.envs,
        workdir=task.workdir,
        num_nodes=task.num_nodes,
        file_mounts=task.file_mounts or {},
        storage=mounts,
        resources=resources,
    )


def launch(tasks: Sequence) -> list[int]:
    """Launch each task as a managed job (needs a cloud account: `sky check`); return the managed job ids."""
    sky = _sky()
    job_ids = []
    for task in tasks:
        request_id = sky.jobs.launch(task, name=task.name)
        job_id, _controller = sky.stream_and_get(request_id)
        job_ids.append(job_id)
    return job_ids
