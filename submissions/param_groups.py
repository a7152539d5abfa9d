"""Optimizer groups for any model, by the role of each parameter: the open division's default optimizer.

    from submissions.param_groups import open_optimizer, open_param_groups
    groups = open_param_groups(model, plan)               # every trainable parameter in exactly one group
    optimizer = open_optimizer(model, plan, compute_dtype) # MuonAdamW over them (what an open submission gets)

`baseline.optim.build_param_groups` knows the baseline GPT's parameters by name; an open model adds its
own, and a parameter in no group would never train. Here each parameter gets a role, first rule first:

| role             | which parameters                                   | optimizer | lr (the plan's, scaled)      |
|------------------|----------------------------------------------------|-----------|------------------------------|
| lm_head          | `lm_head.weight` (name an output head so)          | AdamW     | unembedding_lr·(d/768)^-0.5  |
| embedding        | `transformer.wte.weight`                           | AdamW     | embedding_lr·(d/768)^-0.5    |
| value_embeds     | `value_embeds.*` and every other nn.Embedding      | AdamW     | half the embedding lr        |
| resid, x0, smear | the baseline's scalars, by name                    | AdamW     | as the baseline's            |
| scalars          | every other non-matrix (0-d, 1-d, >2-d)            | AdamW     | scalar_lr, no weight decay   |
| muon             | every other matrix (2-d), one group per shape      | Muon      | matrix_lr, the plan's decay  |

So the baseline GPT gets exactly the baseline's groups (tests/test_open_division.py checks it), a new
matrix trains with Muon, a new gate or scale with AdamW like nanochat's x0_lambdas. A submission that
wants other roles edits the groups this returns, or writes its own build_optimizer.
"""

import torch
import torch.nn as nn

from baseline.config import TrainPlan
from baseline.optim import MuonAdamW

# The baseline GPT's parameters outside transformer.h, by name: the roles nanochat gives them.
NAMED_ROLES = {
    "lm_head.weight": "lm_head",
    "transformer.wte.weight": "embedding",
    "resid_lambdas": "resid",
    "x0_lambdas": "x0",
    "smear_gate.weight": "smear",
    "smear_lambda": "smear",
    "backout_lambda": "smear",
}
# AdamW roles in build_param_groups' order; "scalars" is the open division's addition.
ADAMW_ROLES = ("lm_head", "embedding", "value_embeds", "resid", "x0", "smear", "scalars")


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """name -> role of every trainable parameter (the table in the module docstring)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    roles = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in NAMED_ROLES:
            roles[name] = NAMED_ROLES[name]
        elif id(p) in embeddings:
            roles[name] = "value_embeds"
        elif p.ndim == 2:
            roles[name] = "muon"
        else:
            roles[name] = "scalars"
    return roles


def open_param_groups(model: nn.Module, plan: TrainPlan) -> list[dict]:
    """MuonAdamW groups over every trainable parameter of `model`, by role, each with initial_lr."""
    lr = plan.optimizer_kwargs()
    scale = (plan.model_config.n_embd / 768) ** -0.5  # nanochat's AdamW d_model scaling (fact sheet §2.8)
    adamw = {  # role -> (lr, betas, weight decay), as baseline.optim.build_param_groups sets them
        "lm_head": (lr["unembedding_lr"] * scale, (0.8, 0.96), 0.01),
        "embedding": (lr["embedding_lr"] * scale, (0.8, 0.995), 0.001),
        "value_embeds": (lr["embedding_lr"] * scale * 0.5, (0.8, 0.995), 0.01),
        "resid": (lr["scalar_lr"] * 0.01, (0.8, 0.95), 0.05),
        "x0": (lr["scalar_lr"], (0.96, 0.95), 0.0),
        "smear": (0.2, (0.8, 0.95), 0.0),
        "scalars": (lr["scalar_lr"], (0.8, 0.95), 0.0),
    }
    roles = parameter_roles(model)
    params = dict(model.named_parameters())
    named = list(NAMED_ROLES)  # the baseline's parameters keep build_param_groups' order within a group
    order = sorted(roles, key=lambda name: named.index(name) if name in named else len(named))
    groups = []
    for role in ADAMW_ROLES:
        members = [params[name] for name in order if roles[name] == role]
        if members:
            group_lr, betas, decay = adamw[role]
            groups.append(dict(kind="adamw", params=members, lr=group_lr, betas=betas, eps=1e-10, weight_decay=decay))
    matrices = [params[name] for name in order if roles[name] == "muon"]
    for shape in sorted({p.shape for p in matrices}):
        groups.append(
            dict(
                kind="muon",
                params=[p for p in matrices if p.shape == shape],
                lr=lr["matrix_lr"],
                momentum=0.95,
                ns_steps=5,
                beta2=0.9,
                weight_decay=lr["weight_decay"],
            )
        )
    for group in groups:
        group["initial_lr"] = group["lr"]
    return groups


def open_optimizer(model: nn.Module, plan: TrainPlan, compute_dtype: torch.dtype, **muon_adamw) -> MuonAdamW:
    """MuonAdamW over open_param_groups: an open submission's optimizer unless it defines build_optimizer."""
    return MuonAdamW(
        open_param_groups(model, plan), compute_dtype=compute_dtype, compile=plan.config.compile, **muon_adamw
    )
