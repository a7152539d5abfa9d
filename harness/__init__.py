"""The runner side: run a submission on a track, time it honestly, record everything, submit it.

    campaign.py         registration: the submission checked, data and tokenizer ready, one run dir per seed
    runner.py           `speedrun run` / `resume`: launch each registered run, watch it, write the record
    trainer_process.py  the training child process (alone or under torchrun)
    eval_process.py     the final metric of a closed run, in a process that never imports the submission
    open_eval.py        the final metric of an open run, running its copied model code under the guard
    guard.py            the rules checked inside the processes that run submission code
    telemetry.py        the sampler (NVML, psutil, RAPL) and its summary over the timed steps
    provenance.py       hashes, git, software and hardware for every record
    calibrate.py        `speedrun track calibrate`: a track's target from baseline runs
    chat_tune.py        `speedrun chat-tune`: a short SFT into a chat model, as a child run
    submit.py           `speedrun submit`: pack a run's bundle (with its source.tar) and upload it
    local_board.py      `speedrun board`: runs on a board on this machine (serve, submit, verify) and its chat
    trackers.py         `--log-to wandb|trackio`: the step events and the result sent to an experiment tracker
    reproduce.py        `speedrun reproduce WORK_DIR`: a leaderboard's re-run of a run, inside the sandbox
    runner_machine.py   `speedrun runner`: a runner machine takes re-runs from a leaderboard, sandboxed
    cli.py              the runner side's subcommands

It builds on protocol (tracks, records, statistics), baseline, eval and submissions, and never imports
the leaderboard (import-linter contracts in pyproject.toml).
"""
