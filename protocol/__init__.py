"""What the runner side (`harness`) and the service side (`leaderboard`) agree on: the lowest layer.

    tracks.py    what a track is (hardware, data, tokenizer, target, recipe), read from tracks/*.toml
    record.py    the run's files between processes: run.json (RunSpec) and record.json (RunRecord), typed
    timing.py    the timing rule: which steps' seconds count, computed from step events
    stats.py     statistics over runs: mean ± std, the record significance test, two-sample comparisons
    hashing.py   content hashes of files, trees and data sets (the same on every machine)
    paths.py     where things live on a machine: the one cache root, a track's data and tokenizer
    bundle.py    what an uploaded run bundle holds
    events.py    the step events a trainer writes and the runner stamps
    source.py    a submission's files as they travel (source.tar): packed, checked, unpacked safely
    reproduce.py a re-run of a verified run: the job, the sandbox's work dir, the result a reproducer reports

Nothing here imports the project's other packages: `baseline`, `eval`, `submissions`, `harness` and
`leaderboard` all build on it (the layers are checked by import-linter, see pyproject.toml).
"""
