"""What the runner side (`harness`) and the service side (`leaderboard`) agree on: the lowest layer.

    tracks.py    what a track is (hardware, data, tokenizer, target, recipe), read from tracks/*.toml
    record.py    the run's files between processes: run.json (RunSpec) and record.json (RunRecord), typed
    timing.py    the timing rule: which steps' seconds count, computed from step events
    stats.py     statistics over runs: mean ± std, the record significance test, two-sample comparisons
    hashing.py   content hashes of files, trees and data sets (the same on every machine)
    paths.py     where things live on a machine: the one cache root, a track's data and tokenizer

Nothing here imports the project's other packages: `baseline`, `eval`, `submissions`, `harness` and
`leaderboard` all build on it (the layers are checked by import-linter, see pyproject.toml).
"""
