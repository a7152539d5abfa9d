"""The speedrun leaderboard: a FastAPI service that takes run bundles, verifies them, ranks and shows them.

    speedrun serve --host 127.0.0.1 --port 8000      # leaderboard.app.serve: migrates, then uvicorn
    speedrun verify --worker [--once]                # leaderboard.worker.verify_worker
    speedrun submit runs/RUN_ID --server URL --token T   # leaderboard.client.submit
    speedrun token create NAME [--admin]             # leaderboard.tokens.create_token

    settings.py   Settings(BaseSettings), read once: database URL, storage, limits, tolerances
    db.py         the engine (SQLite file by default, PostgreSQL via DATABASE_URL) and Alembic upgrades
    models.py     tables and the API's public shapes
    tokens.py     API tokens (stored only as sha256) and the admin command that makes them
    bundle.py     a run bundle: parse, bound, validate and store what a submitter uploads
    crud.py       keyword-only reads and writes the routers and the worker share
    checks.py     each verification check, a pure function of the bundle and the track
    recompute.py  the adapter onto the frozen eval (val bpb, CORE) used by the checks
    worker.py     claims pending verifications and runs the checks
    ranking.py    standings per (track, submission), the significance test and the record progression
    charts.py     inline SVG charts rendered on the server
    routers/      one router per resource (tracks, runs, submissions, admin) and the HTML pages
    app.py        create_app() and serve()
    client.py     submit(): what `speedrun submit` sends

Dependencies point one way: the leaderboard reads run records and uses `baseline` + `eval` only to
verify; nothing in the frozen packages imports it.
"""
