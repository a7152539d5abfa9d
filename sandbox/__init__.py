"""sandbox: run untrusted code (an uploaded submission) behind hard walls.

The lowest layer of the project: it imports nothing from the other packages, and both the
runner side (harness) and the service side (leaderboard) use it. `bwrap.py` is the primitive
and documents every wall; `cgroup.py` holds the kernel limits it puts on a sandbox's processes.
"""

from sandbox.bwrap import Limits, SandboxResult, available, run

__all__ = ["Limits", "SandboxResult", "available", "run"]
