"""The local launcher: each seed's command line runs on this machine, one after another.

    returncodes = run_local([["speedrun", "run", "baseline", "--track", "cpu-books", "--seed-list", "42"], ...])

This is what `speedrun run` does with its seeds today; the other launchers take the same command lines.
"""

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_local(
    commands: Sequence[Sequence[str]],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    stop_after_signal: bool = True,
) -> list[int]:
    """Run each command to its end; return their exit codes (negative: killed by that signal).

    A command killed by a signal (the machine is going away, or someone pressed Ctrl-C) stops the
    rest when `stop_after_signal`, as `speedrun run` stops its seeds after a killed one.
    """
    returncodes = []
    for command in commands:
        returncode = subprocess.run(list(command), cwd=cwd, env=env).returncode
        returncodes.append(returncode)
        if returncode < 0 and stop_after_signal:
            break
    return returncodes
