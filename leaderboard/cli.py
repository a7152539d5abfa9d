"""The service side's `speedrun` commands (speedrun.py mounts them next to the runner's).

speedrun serve [--workers N]                # the leaderboard (SQLite, or DATABASE_URL)
speedrun verify --worker                    # verify uploaded runs, re-run chosen ones (several may run)
speedrun token create NAME [--admin]        # an API token for a submitter (shown once; expires)
speedrun token create NAME --runner         # a runner machine's token (`speedrun runner` on that machine)
speedrun token revoke NAME                  # revoke every live token of NAME
"""

# Each command imports what it runs: `speedrun` mounts these next to the runner's commands, and a runner's
# `speedrun run` need not load the web app (about a second per call).


def _serve(args):
    from leaderboard.app import serve

    serve(args.host, args.port, workers=args.workers)


def _verify(args):
    from leaderboard.verifier import verify_worker

    n = verify_worker(once=not args.worker)
    print(f"finished {n} verification and reproduction jobs")


def _token_create(args):
    from leaderboard.tokens import create_token

    print(create_token(args.name, admin=args.admin, runner=args.runner))


def _token_revoke(args):
    from leaderboard.tokens import revoke_tokens_cli

    n = revoke_tokens_cli(args.name)
    print(f"revoked {n} token{'s' if n != 1 else ''} of {args.name}")


def add_commands(sub) -> None:
    """Mount the service's subcommands on `speedrun`'s subparsers."""
    p = sub.add_parser("serve", help="serve the leaderboard (pages, API, chat)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=None, help="server processes (default: cores with PostgreSQL, 1 with SQLite)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("verify", help="verify pending uploads with the frozen eval")
    p.add_argument("--worker", action="store_true", help="keep polling for work (default: one pass)")
    p.set_defaults(func=_verify)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", help="create a token (shown once; only its hash is stored)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--runner", action="store_true", help="a runner machine's account: may take reproduction jobs")
    p.set_defaults(func=_token_create)
    p = token.add_parser("revoke", help="revoke every live token of a submitter")
    p.add_argument("name")
    p.set_defaults(func=_token_revoke)
