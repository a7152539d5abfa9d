"""The speedrun leaderboard: a FastAPI service that takes run bundles, verifies them, ranks and shows them.

    speedrun serve --host 127.0.0.1 --port 8000      # leaderboard.app.serve: migrates, then uvicorn
    speedrun verify --worker [--once]                # leaderboard.verifier.verify_worker
    speedrun token create NAME [--admin]             # leaderboard.tokens.create_token
(Submitters upload with `speedrun submit`, the runner side's harness/submit.py.)

    cli.py        the service's `speedrun` subcommands
    settings.py   Settings(BaseSettings), read once: database URL, storage, limits, tolerances
    db.py         the engine (SQLite file by default, PostgreSQL via DATABASE_URL), Alembic upgrades, track sync
    models.py     tables and the API's public shapes
    tokens.py     API tokens (stored only as sha256) and the admin command that makes them
    uploads.py    an uploaded run bundle: parse, bound, validate and store it
    crud.py       keyword-only reads and writes the routers and the verifier share
    resources.py  the server's own copies of a track's data, tokenizer, eval bundle and code hashes
    checks.py     each verification check, a pure function of the bundle, the track and the server's facts
    recompute.py  the adapter onto the frozen eval (val bpb, CORE) used by the checks
    verifier.py   claims pending verifications and runs the checks
    ranking.py    standings per (track, submission), the significance test and the record progression
    charts.py     inline SVG charts rendered on the server
    chat.py       the served model, hot swaps and limited streaming generation
    routers/      one router per resource (tracks, runs, submissions, admin, chat) and the HTML pages
    app.py        create_app() and serve()

Dependencies point one way: the leaderboard builds on `protocol` (tracks, records, statistics, hashes)
and uses `baseline` + `eval` to verify; it never imports `harness` or `submissions` (import-linter
contracts in pyproject.toml), and nothing below it imports it.
"""
