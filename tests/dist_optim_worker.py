"""2-rank replay of the golden optimizer unit case, for tests/test_optim.py (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 \
        -m tests.dist_optim_worker GOLDEN_DIR OUT_DIR

Each rank gets a different gradient (2·g on a random half of the elements, 0 elsewhere, the halves
complementary across ranks), so only a correct average reproduces the single-process step. The run
resumes halfway from per-rank state dicts, and writes every rank's params after every step to
OUT_DIR/params_rank{r}.safetensors.
"""

import io
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import save_file

from baseline.optim import MuonAdamW
from tests.test_optim import golden_grads, load_unit, unit_groups, unit_params, unit_step

# The unit case's AdamW tensors are all < 1024 elements; this one is sharded along dim 0.
EXTRA_PARAMS = {"big": (64, 32)}


def extra_grads(step: int) -> dict:
    gen = torch.Generator().manual_seed(100 + step)
    return {name: torch.randn(shape, generator=gen) for name, shape in EXTRA_PARAMS.items()}


def case_params(spec, tensors) -> dict[str, nn.Parameter]:
    params = unit_params(spec, tensors)
    for name, shape in EXTRA_PARAMS.items():
        params[name] = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(7)))
    return params


def case_groups(spec, params) -> list[dict]:
    groups = unit_groups(spec, params)
    embedding_group = groups[1]
    return groups + [dict(embedding_group, params=[params[name]]) for name in EXTRA_PARAMS]


def rank_grad(grad: torch.Tensor, rank: int, gen: torch.Generator) -> torch.Tensor:
    """This rank's part of `grad`: the two ranks' parts average to `grad` exactly."""
    first_half = torch.rand(grad.shape, generator=gen) < 0.5  # same draw on both ranks
    mine = first_half if rank == 0 else ~first_half
    return torch.where(mine, 2 * grad, torch.zeros_like(grad))


def check_uneven_shard_is_refused() -> None:
    odd = nn.Parameter(torch.zeros(3, 512))
    odd.grad = torch.zeros_like(odd)
    optimizer = MuonAdamW([dict(kind="adamw", params=[odd], lr=0.1, betas=(0.8, 0.95), eps=1e-10, weight_decay=0)])
    try:
        optimizer.step()
    except ValueError as e:
        assert "not divisible by world size 2" in str(e), e
    else:
        raise AssertionError("a (3, 512) AdamW param was sharded over 2 ranks without an error")


def main(golden: Path, out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, "the per-rank gradient split assumes 2 ranks"

    spec, tensors = load_unit(golden)
    params = case_params(spec, tensors)
    optimizer = MuonAdamW(case_groups(spec, params))

    n_steps = len(spec["steps"])
    split_gen = torch.Generator().manual_seed(1234)
    results = {}
    for s in range(n_steps):
        if s == n_steps // 2:  # resume from this rank's (sharded) optimizer state
            buffer = io.BytesIO()
            torch.save(optimizer.state_dict(), buffer)
            optimizer = MuonAdamW(case_groups(spec, params))
            optimizer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
        grads = {**golden_grads(tensors, s), **extra_grads(s)}
        grads = {name: rank_grad(g, rank, split_gen) for name, g in grads.items()}
        unit_step(optimizer, params, spec, grads, s)
        results.update({f"step{s}.{name}": p.detach().clone() for name, p in params.items()})

    # Sharded state: half the rows of a big AdamW tensor, ceil(K/2) whole matrices of a Muon group.
    assert optimizer.state[params["big"]]["exp_avg"].shape == (32, 32)
    assert optimizer.state[params["resid"]]["exp_avg"].shape == (4,)  # small: replicated
    assert optimizer.state[params["sq0"]]["momentum_buffer"].shape == (2, 16, 16)  # K = 3
    check_uneven_shard_is_refused()

    save_file(results, out / f"params_rank{rank}.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
