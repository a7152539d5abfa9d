"""Submissions: plug-ins that train the baseline model faster (the closed division) or bring their own model (open),
and the contract they must keep.

- `contract.py`: the rules, read top to bottom (the two divisions, what may be set, hooks, kernel
  tolerances), and `load_submission(name_or_path) -> Submission`.
- `conformance.py`: `check_submission(sub)`, the coverage and equivalence checks run before any training;
  `open_conformance.py`: what it checks of an open submission's own model.
- `param_groups.py`: optimizer groups by role for any model (an open submission's default optimizer).
- `scaffold.py`: `scaffold(name, open_division=False)`, what `speedrun new NAME [--open]` writes.
- `<name>/submission.py` + `<name>/README.md`: one submission each (`baseline/` has no overrides;
  `unet_skips/` and `attention_gate/` are open-division ports of modded-nanogpt records).
"""

from submissions.conformance import check_submission
from submissions.contract import Submission, SubmissionError, load_submission

__all__ = ["Submission", "SubmissionError", "check_submission", "load_submission"]
