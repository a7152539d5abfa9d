"""The service side's `speedrun` commands (speedrun.py mounts them next to the runner's).

speedrun serve                              # the leaderboard (SQLite, or DATABASE_URL)
speedrun verify --worker                    # verify uploaded runs (several may run)
speedrun token create NAME [--admin]        # an API token for a submitter (shown once)
"""

from leaderboard.app import serve
from leaderboard.tokens import create_token
from leaderboard.verifier import verify_worker


def _serve(args):
    serve(args.host, args.port)


def _verify(args):
    n = verify_worker(once=not args.worker)
    print(f"verified {n} runs")


def _token_create(args):
    print(create_token(args.name, admin=args.admin))


def add_commands(sub) -> None:
    """Mount the service's subcommands on `speedrun`'s subparsers."""
    p = sub.add_parser("serve", help="serve the leaderboard (pages, API, chat)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_serve)

    p = sub.add_parser("verify", help="verify pending uploads with the frozen eval")
    p.add_argument("--worker", action="store_true", help="keep polling for work (default: one pass)")
    p.set_defaults(func=_verify)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", help="create a token (shown once; only its hash is stored)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.set_defaults(func=_token_create)
