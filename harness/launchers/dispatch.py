"""`speedrun run --launcher slurm|sky`: the seeds' command lines, their jobs, and the campaign's note of them.

    speedrun run baseline --track gpt2 --seeds 5 --launcher slurm --partition h100 --account proj
    speedrun run baseline --track gpt2 --seeds 5 --launcher sky --spot
    speedrun status CAMPAIGN        # each run's record status and its job's state, wherever it runs

SLURM (a shared filesystem): the runner registers every seed's run directory here first, then each
job runs `speedrun execute RUN_DIR` (a multi-node job runs it on every node, which finds its node
rank in the SPEEDRUN_NODE_* variables the job sets), and a preempted job is requeued with
`speedrun resume RUN_DIR`, which continues from the checkpoint the notice made it save.

SkyPilot (a machine of its own per seed): the seed's runs are registered on that machine, under the
campaign's id, so their names are known here in advance: `CAMPAIGN-sSEED`; a relaunched spot job
resumes that run from the runs bucket. The campaign file here lists the runs and their managed jobs;
copy the bucket's runs next to it to gather them (`speedrun stats CAMPAIGN --runs-dir DIR`).
"""

import os
import sys
from pathlib import Path

from harness.launchers import sky, slurm
from harness.launchers.track import track_needs
from protocol.record import Campaign, write_campaign


def node_topology() -> tuple[int, int, str | None]:
    """(nnodes, node_rank, rdzv HOST:PORT) from the job's SPEEDRUN_NODE_* variables (1, 0, None outside a job)."""
    nnodes = int(os.environ.get("SPEEDRUN_NNODES", 1))
    if nnodes <= 1:
        return 1, 0, None
    port = os.environ.get("SPEEDRUN_MASTER_PORT", "29500")
    return nnodes, int(os.environ["SPEEDRUN_NODE_RANK"]), f"{os.environ['SPEEDRUN_MASTER_ADDR']}:{port}"


def submit_slurm(
    campaign: Campaign, run_dirs: list[Path], *, track: str, config: slurm.SlurmConfig, nodes: int, nproc: int,
    time_min: int | None, runs_dir: Path,
) -> Campaign:  # fmt: skip
    """One job per registered run; the campaign file notes the jobs."""
    needs = track_needs(track, nodes=nodes, time_min=time_min)
    python = config.python or sys.executable
    execute = [[python, "-m", "speedrun", "execute", str(d.resolve()), "--nproc", str(nproc)] for d in run_dirs]
    resume = [[python, "-m", "speedrun", "resume", str(d.resolve())] for d in run_dirs]
    jobs = slurm.submit(execute, resources=needs.resources, config=config, resume_commands=resume,
                        job_name=campaign.campaign_id)  # fmt: skip
    noted = campaign.model_copy(update={"launcher": "slurm", "jobs": dict(zip(campaign.run_ids, jobs, strict=True))})
    write_campaign(runs_dir, noted)
    return noted


def sky_commands(campaign: Campaign, *, submission: str, track: str, checkpoint_every_min: float | None):
    """The seeds' command lines and resume lines on the cloud machines (the runs bucket is RUNS_DIR there)."""
    common = ["--runs-dir", sky.RUNS_DIR, "--data-dir", sky.DATA_DIR, "--campaign-id", campaign.campaign_id]
    if checkpoint_every_min:
        common += ["--checkpoint-every", str(checkpoint_every_min)]
    commands = [
        ["speedrun", "run", submission, "--track", track, "--seed-list", str(s), *common] for s in campaign.seeds
    ]
    resumes = [["speedrun", "resume", run_id, "--runs-dir", sky.RUNS_DIR] for run_id in campaign.run_ids]
    return commands, resumes


def submit_sky(
    campaign: Campaign, *, submission: str, track: str, config: sky.SkyConfig, checkpoint_every_min: float | None,
    runs_dir: Path, launch: bool = True,
) -> tuple[Campaign, list]:  # fmt: skip
    """One managed job per seed (built and checked offline; launched when `launch`); the campaign notes them."""
    commands, resumes = sky_commands(campaign, submission=submission, track=track,
                                     checkpoint_every_min=checkpoint_every_min)  # fmt: skip
    tasks = sky.build_tasks(commands, needs=track_needs(track), config=config, resume_commands=resumes,
                            name=campaign.campaign_id)  # fmt: skip
    for task in tasks:
        sky.check_task(task)
    jobs = [str(j) for j in sky.launch(tasks)] if launch else [f"not launched: {t.name}" for t in tasks]
    noted = campaign.model_copy(update={"launcher": "sky", "jobs": dict(zip(campaign.run_ids, jobs, strict=True))})
    write_campaign(runs_dir, noted)
    return noted, tasks
