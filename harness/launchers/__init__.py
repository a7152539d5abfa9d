"""Launchers: where each seed of a campaign runs, once the runner has registered the seeds' runs.

    (local)       `speedrun run` itself, one seed after another on this machine (harness/runner.py)
    slurm.py      one SLURM job per seed, as a job array through submitit; a preempted job requeues its resume
    sky.py        one SkyPilot managed job per seed on a cloud (spot or not), built with SkyPilot's Python API
    dispatch.py   what `speedrun run --launcher slurm|sky` does: the command lines, the jobs, the campaign's note
    track.py      the only reader of tracks here: the machine and the data a seed needs

slurm.py and sky.py run command lines (argv lists) and never import the runner. SLURM and SkyPilot are
optional extras: `pip install -e '.[slurm]'`, `pip install -e '.[sky]'`.
"""
