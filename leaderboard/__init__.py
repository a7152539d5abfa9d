"""The speedrun leaderboard: a FastAPI service that takes run bundles, verifies them, ranks and shows them.

    speedrun serve --host 127.0.0.1 --port 8000 [--workers N]   # leaderboard.app.serve: migrates, then uvicorn
    speedrun verify --worker [--once]                # leaderboard.verifier.verify_worker
    speedrun token create NAME [--admin] [--runner]  # leaderboard.tokens.create_token (expires)
    speedrun token revoke NAME                       # every live token of NAME
(Submitters register runs (POST /api/registrations) and upload with `speedrun submit`, the runner side.)

    cli.py          the service's `speedrun` subcommands
    settings.py     Settings(BaseSettings), read once: database URL, storage, limits, tolerances
    db.py           the engine (SQLite file by default, PostgreSQL via DATABASE_URL), Alembic upgrades, track sync
    models.py       tables and the API's public shapes
    tokens.py       API tokens (stored only as sha256, expiring, revocable) and the commands that make and revoke them
    limits.py       request bodies capped per route before they are read; rate limits per address and token
    members.py      the bundle members' strict schemas, and the model checked against the track
    summary.py      the bounded series a run page draws, made once at upload
    uploads.py      an uploaded run bundle: stage, bound, validate and store it; sweep leftovers
    crud.py         keyword-only reads and writes the routers and the verifier share
    resources.py    the server's own copies of a track's data, held-out shards, tokenizer, eval bundle, code hashes
    checks.py       each verification check, a pure function of the bundle, the track and the server's facts
    check_timing.py the train_time check: the timed seconds from the step events alone, claims held to them
    recompute.py    the adapter onto the frozen eval (val bpb, CORE) used by the checks
    verify_child.py the checks of one bundle, in a child process that answers JSON (never an open run's model)
    open_metric.py  an open run's metric: its model (the submission's code) only in the sandbox, its logits scored here
    isolation.py    the one launcher of that child: the sandbox (sandbox/), or rlimits without bubblewrap
    jobqueue.py     claims and leases over a job table, shared by verification and reproduction
    verifier.py     the worker pool: claims verifications (leases renewed, attempts capped), then re-runs
    reproduction.py which verified runs are re-run (opt-in per track, chosen at random), by whom, in the sandbox
    comparison.py   the reproduction rule: a re-run against its claim (losses, metric, time, clocks)
    ranking.py      standings per (track, submission), the significance test and the record progression, per division
    compare.py      runs or submissions of one track side by side: curves, bars, protocol.stats.verdict
    pagecache.py    board reads built once and served as bytes with ETags, before routing when fresh
    redact.py       no message carries a server path
    charts.py       inline SVG charts rendered on the server
    chat.py         the served models (one per division), hot swaps and limited streaming generation
    open_chat.py    an open model in the chat: its source unpacked, its model in a warm sandboxed process (logits only)
    routers/        one router per resource (tracks, runs, registrations, submissions, admin, runners, chat), pages
    app.py          create_app() and serve()

Dependencies point one way: the leaderboard builds on `protocol` (tracks, records, statistics, hashes)
and uses `baseline` + `eval` to verify; it never imports `harness` or `submissions` (import-linter
contracts in pyproject.toml), and nothing below it imports it. No process of the service imports submitted
code: an open run's model runs in the bubblewrap sandbox and only its logits come back (scoring and chat).
"""
