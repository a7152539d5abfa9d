"""The conformance check of a submission, in a child process: the runner itself never imports plug-in code.

    python -m harness.plugin_check SUBMISSION      # prints one JSON line: {"name", "path", "config", "division"}

It loads the submission and runs submissions.conformance.check_submission (a tiny model on CPU);
on success it prints what the runner needs to know (the folder, the name, the validated CONFIG
overrides); on a broken contract it prints `speedrun: error: <one line>` on stderr and exits 2.
"""

import json
import sys

import torch

from submissions.conformance import check_submission
from submissions.contract import SubmissionError, load_submission


def main(submission: str) -> int:
    torch.set_num_threads(1)  # a tiny model: one thread is faster, and leaves the other core alone
    try:
        plugin = load_submission(submission)
        check_submission(plugin)
    except SubmissionError as e:
        print(f"speedrun: error: {e}", file=sys.stderr)
        return 2
    path, config = str(plugin.path.resolve()), plugin.config_overrides
    print(json.dumps({"name": plugin.name, "path": path, "config": config, "division": plugin.division}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
