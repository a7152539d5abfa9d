"""`speedrun new NAME [--open]`: write submissions/NAME/ with a submission.py whose every hook is present.

    from submissions.scaffold import scaffold
    scaffold("my_idea")                      # -> submissions/my_idea/{submission.py, README.md}
    scaffold("my_model", open_division=True) # the open division: a build_model to edit, its rules as comments

As written it is the baseline (every hook commented out; `--open`: a build_model that builds the baseline
GPT) and passes the conformance test; uncomment and edit what the idea changes. The README has the sections
reviewers expect: Claim, Method, Results (one row per seed) and Reproduce.
"""

import re
from pathlib import Path

from submissions.contract import ALLOWED_OVERRIDES, KERNEL_SPECS, OPEN_OVERRIDES

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

OPEN_SUBMISSION = '''"""{name}: TODO one line on what this changes in the model (the open division).

    speedrun run {name} --track cpu-books --seeds 5
"""

from baseline.checkpoint import build_model as build_baseline_gpt

METADATA = {{
    "authors": ["TODO your name"],
    "description": "TODO one sentence: what changes in the model, and why it should reach the target sooner",
    # "references": ["TODO paper, record or repository the idea comes from"],
}}

# Training-config overrides: these fields (contract.ALLOWED_OVERRIDES and, in the open division, OPEN_OVERRIDES):
# CONFIG = {{
{config}
# }}


def build_model(plan, device, compute_dtype):
    """The model this submission trains and the eval scores; the rules (submissions/open_conformance.py checks them):

    1. Return an initialised torch.nn.Module on `device`, built from `plan` alone: plan.model_config has the track's
       vocab_size and sequence_len and the dials (n_layer, n_embd, n_head, window_pattern); compute_dtype is the
       activation dtype (bf16 on GPUs, fp32 on CPUs).
    2. model(idx) -> float32 logits (B, T, vocab_size); model(idx, targets) -> their mean cross-entropy (targets -1
       ignored); model(idx, targets, loss_reduction="none") -> the same per token, (B, T). The eval scores the logits.
    3. Causal, row by row: position t sees the tokens up to t of its own row; any T up to sequence_len runs (chat).
    4. Everything learned or drawn at random lives in the state_dict: checkpoints are safetensors, loaded into a
       fresh build_model.
    5. In eval mode it is deterministic and changes nothing: no learning on the val data it is scored on.
    6. Every parameter gets a gradient and an optimizer group (by default submissions.param_groups' roles).
    7. No files, sockets, threads or processes: the eval runs this code under a guard, the server in a sandbox.
    """
    # As written, the baseline GPT: subclass baseline.gpt.GPT (or write any nn.Module) and build it here instead.
    return build_baseline_gpt(plan.model_config, device, compute_dtype)


# The optimizer: by default submissions.param_groups.open_optimizer (Muon for matrices, AdamW for the rest, the
# baseline's groups for the baseline's parameters). Edit the groups, or write your own (each with 'initial_lr').
# def build_optimizer(model, plan, compute_dtype):
#     from baseline.optim import MuonAdamW
#     from submissions.param_groups import open_param_groups
#
#     return MuonAdamW(open_param_groups(model, plan), compute_dtype=compute_dtype)

# The schedule: lr multiplier, Muon momentum and Muon weight decay at each (step, progress in [0, 1]).
# def build_schedule(plan):
#     return plan.schedule()  # baseline.schedule.Schedule
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


def scaffold(name: str, dest_dir: str | Path = "submissions", *, open_division: bool = False) -> Path:
    """Create dest_dir/name/ with submission.py and README.md; returns the folder. ValueError if it exists.

    open_division: the submission defines build_model (the open division of submissions/contract.py).
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"submission name {name!r} must be lowercase letters, digits and _ starting with a letter")
    if name == "baseline":
        raise ValueError("'baseline' names the frozen baseline: pick a name for your idea")
    folder = Path(dest_dir) / name
    if folder.exists():
        raise ValueError(f"{folder} already exists: pick another name or edit that submission")
    overrides = ALLOWED_OVERRIDES | (OPEN_OVERRIDES if open_division else {})
    config = "\n".join(f'#     "{field}": ...,  # {kind}' for field, kind in overrides.items())
    kernels = "\n".join(
        f'#     # {spec.signature}\n#     "{op}": {REFERENCE_NAMES[op]},' for op, spec in KERNEL_SPECS.items()
    )
    folder.mkdir(parents=True)
    template = OPEN_SUBMISSION if open_division else SUBMISSION
    (folder / "submission.py").write_text(template.format(name=name, config=config, kernels=kernels))
    (folder / "README.md").write_text(README.format(name=name))
    return folder
