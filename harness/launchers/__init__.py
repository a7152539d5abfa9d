"""Launchers: where a run's per-seed command lines execute, independent of what the commands are.

    local.py    one after another on this machine (what `speedrun run` does today)
    slurm.py    one SLURM job per seed, as a job array through submitit; preempted jobs requeue a resume command
    sky.py      one SkyPilot managed job per seed on a cloud (spot or not), built with SkyPilot's Python API
    track.py    the only reader of tracks here: the machine and the data a seed needs

The caller (the runner) builds the command lines (argv lists), one per seed, plus the command that
resumes each one; the launchers never import the runner. SLURM and SkyPilot are optional extras:
`pip install -e '.[slurm]'`, `pip install -e '.[sky]'`.
"""
