"""Submissions: plug-ins that train the frozen baseline model faster, and the contract they must keep.

- `contract.py`: the rules, read top to bottom (what may be set, what may not, hooks, kernel tolerances),
  and `load_submission(name_or_path) -> Submission`.
- `conformance.py`: `check_submission(sub)`, the coverage and equivalence checks run before any training.
- `scaffold.py`: `scaffold(name)`, what `speedrun new NAME` writes.
- `<name>/submission.py` + `<name>/README.md`: one submission each (`baseline/` has no overrides).
"""

from submissions.conformance import check_submission
from submissions.contract import Submission, SubmissionError, load_submission

__all__ = ["Submission", "SubmissionError", "check_submission", "load_submission"]
