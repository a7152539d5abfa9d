"""`speedrun`: one command line over both sides, the runner's (harness/cli.py) and the service's (leaderboard/cli.py).

    speedrun --help                 # every subcommand
    python -m speedrun run baseline --track cpu-books --seeds 3

This module only mounts the two sides' subcommands and turns bad input into one line on stderr.
"""

import argparse
import sys

import requests

from harness import cli as runner_cli
from harness.submit import SubmitError
from leaderboard import cli as service_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speedrun", description="The nanochat time-to-GPT-2 speedrun: run, submit, verify, rank, chat."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    runner_cli.add_commands(sub)
    service_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, SubmitError, requests.ConnectionError) as e:
        # Bad input: one line that names the problem and the fix, no traceback.
        print(f"speedrun: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
