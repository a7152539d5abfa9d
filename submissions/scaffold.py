"""`speedrun new NAME`: write submissions/NAME/ with a submission.py whose every hook is present, commented out.

    from submissions.scaffold import scaffold
    scaffold("my_idea")            # -> submissions/my_idea/{submission.py, README.md}

As written it is the baseline (every hook commented out) and passes the conformance test; uncomment and
edit what the idea changes. The README has the sections reviewers expect: Claim, Method, Results (one
row per seed) and Reproduce.
"""

import re
from pathlib import Path

from submissions.contract import ALLOWED_OVERRIDES, KERNEL_SPECS

NAME = re.compile(r"[a-z][a-z0-9_]*")

SUBMISSION = '''"""{name}: TODO one line on what this submission changes (rules: submissions/contract.py).

    speedrun run {name} --track cpu-books --seeds 3
"""

METADATA = {{
    "authors": ["TODO your name"],
    "description": "TODO one sentence: what changes, and why it should reach the target sooner",
    # "references": ["TODO paper or repository the idea comes from"],
}}

# Training-config overrides; only these fields may be set (contract.ALLOWED_OVERRIDES):
# CONFIG = {{
{config}
# }}

# The optimizer: every trainable parameter in exactly one param group, each group with 'initial_lr'.
# def build_optimizer(model, plan, compute_dtype):
#     from baseline.optim import MuonAdamW, build_param_groups
#
#     groups = build_param_groups(model, **plan.optimizer_kwargs())
#     return MuonAdamW(groups, compute_dtype=compute_dtype)

# The schedule: lr multiplier, Muon momentum and Muon weight decay at each (step, progress in [0, 1])
# (contract.Schedule; progress is the fraction of the run done, by steps or by the time budget).
# def build_schedule(plan):
#     return plan.schedule()  # baseline.schedule.Schedule

# Faster kernels for named operations; each must compute the baseline's function (contract.KERNEL_SPECS).
# from baseline import attention, kernels, optim
#
# KERNELS = {{
{kernels}
# }}
'''

README = """# {name}

## Claim
TODO one sentence: what this changes, and what it does to the time to reach the target on which track.

## Method
TODO what the code does and why it should help; cite the paper or source of the idea.

## Results
Track `cpu-books`, each run against the baseline on the same machine. The baseline's rows come from
`speedrun run baseline --track cpu-books --seeds 3` in the same session.

| submission | run id | seed | timed seconds | metric (val_bpb) |
|---|---|---|---|---|
| {name} | pending | | | |
| baseline | pending | | | |

## Reproduce
```
speedrun run {name} --track cpu-books --seeds 3
speedrun run baseline --track cpu-books --seeds 3
speedrun stats runs/<run ids>
```
"""

REFERENCE_NAMES = {
    "attention": "attention.attention",
    "rms_norm": "kernels.rms_norm",
    "rotary": "kernels.rotary",
    "mlp_activation": "kernels.relu_squared",
    "softcap_cross_entropy": "kernels.softcap_cross_entropy",
    "orthogonalize": "optim.polar_express",
}


def scaffold(name: str, dest_dir: str | Path = "submissions") -> Path:
    """Create dest_dir/name/ with submission.py and README.md; returns the folder. ValueError if it exists."""
    if not NAME.fullmatch(name):
        raise ValueError(f"submission name {name!r} must be lowercase letters, digits and _ starting with a letter")
    if name == "baseline":
        raise ValueError("'baseline' names the frozen baseline: pick a name for your idea")
    folder = Path(dest_dir) / name
    if folder.exists():
        raise ValueError(f"{folder} already exists: pick another name or edit that submission")
    config = "\n".join(f'#     "{field}": ...,  # {kind}' for field, kind in ALLOWED_OVERRIDES.items())
    kernels = "\n".join(
        f'#     # {spec.signature}\n#     "{op}": {REFERENCE_NAMES[op]},' for op, spec in KERNEL_SPECS.items()
    )
    folder.mkdir(parents=True)
    (folder / "submission.py").write_text(SUBMISSION.format(name=name, config=config, kernels=kernels))
    (folder / "README.md").write_text(README.format(name=name))
    return folder
