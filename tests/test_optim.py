"""MuonAdamW equals nanochat's optimizer: the golden unit steps, the groups, orthogonality, 2 ranks.

The golden unit case (golden README §3: `optim/unit.json`, `unit.safetensors`) steps nanochat's
MuonAdamW on synthetic parameters with given gradients; the helpers here replay it and are shared
with `tests/dist_optim_worker.py`, which replays it on 2 ranks under torchrun.
"""

import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from baseline.gpt import GPT, GPTConfig
from baseline.optim import MuonAdamW, build_param_groups, polar_express
from tests.conftest import REPO, load_json

GOLDEN_CONFIG = dict(
    sequence_len=256, vocab_size=4096, n_layer=4, n_head=2, n_kv_head=2, n_embd=128, window_pattern="SSSL"
)
GOLDEN_SETUP = dict(unembedding_lr=0.008, embedding_lr=0.3, matrix_lr=0.02, weight_decay=0.28, scalar_lr=0.5)


# ---------------------------------------------------------------- the golden unit case


def load_unit(golden):
    return load_json(golden / "optim" / "unit.json"), load_file(golden / "optim" / "unit.safetensors")


def unit_params(spec, tensors) -> dict[str, nn.Parameter]:
    return {p["name"]: nn.Parameter(tensors[f"init.{p['name']}"].clone()) for p in spec["params"]}


def unit_groups(spec, params) -> list[dict]:
    groups = []
    for g in spec["groups"]:
        group = {k: v for k, v in g.items() if k != "name"}
        group["params"] = [params[name] for name in g["params"]]
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        group["initial_lr"] = group["lr"]
        groups.append(group)
    return groups


def set_schedule(optimizer, values: dict) -> None:
    """What the trainer does before each step: scale every lr, set Muon momentum and weight decay."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * values["lr_multiplier"]
        if group["kind"] == "muon":
            group["momentum"] = values["muon_momentum"]
            group["weight_decay"] = values["muon_weight_decay"]


def unit_step(optimizer, params, spec, grads: dict, step: int) -> None:
    for name, p in params.items():
        p.grad = grads[name].clone()
    set_schedule(optimizer, spec["steps"][step])
    optimizer.step()


def golden_grads(tensors, step: int) -> dict:
    prefix = f"step{step}.grad."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def assert_matches(actual, expected, what: str, rel=2e-5, max_abs=1e-5) -> None:
    """Golden README tolerance: per tensor ‖Δ‖/‖x‖ ≤ rel and max |Δ| ≤ max_abs."""
    diff = (actual.double() - expected.double()).flatten()
    scale = expected.double().norm().clamp_min(1e-30)
    assert diff.norm() / scale <= rel, f"{what}: relative error {(diff.norm() / scale).item():.3g}"
    assert diff.abs().max() <= max_abs, f"{what}: max abs error {diff.abs().max().item():.3g}"


# ---------------------------------------------------------------- golden equality


def test_unit_steps_match_nanochat_params_and_state(golden):
    spec, tensors = load_unit(golden)
    params = unit_params(spec, tensors)
    optimizer = MuonAdamW(unit_groups(spec, params))
    for s in range(len(spec["steps"])):
        unit_step(optimizer, params, spec, golden_grads(tensors, s), s)
        for name, p in params.items():
            assert_matches(p.detach(), tensors[f"step{s}.param.{name}"], f"step {s} {name}")
    finals = {k: v for k, v in tensors.items() if k.startswith("final_state.")}
    for key, expected in finals.items():
        _, name, field = key.split(".")
        got = optimizer.state[params[name]][field]
        if field == "step":
            assert got == expected.item(), key
        else:
            assert got.shape == expected.shape, key
            assert_matches(got, expected, key)
    n_muon_groups = sum(g["kind"] == "muon" for g in spec["groups"])
    n_adamw_params = sum(len(g["params"]) for g in spec["groups"] if g["kind"] == "adamw")
    assert len(finals) == 3 * n_adamw_params + 2 * n_muon_groups  # no golden state left unchecked


def test_state_dict_round_trip_resumes_bit_identically(golden):
    spec, tensors = load_unit(golden)
    n_steps = len(spec["steps"])

    def run(resume_at: int | None):
        params = unit_params(spec, tensors)
        optimizer = MuonAdamW(unit_groups(spec, params))
        for s in range(n_steps):
            if s == resume_at:
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                optimizer = MuonAdamW(unit_groups(spec, params))
                optimizer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
            unit_step(optimizer, params, spec, golden_grads(tensors, s), s)
        return params

    straight, resumed = run(None), run(n_steps // 2)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


# ---------------------------------------------------------------- Muon pieces


def test_polar_express_output_is_near_orthogonal():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 64, 16), (3, 16, 64), (2, 128, 32)]:
        X = torch.randn(shape, generator=gen)  # well-conditioned (rectangular Gaussian)
        Y = polar_express(X, 5)
        singular_values = torch.linalg.svdvals(Y)
        # Polar Express trades exactness for speed: 5 iterations land within ~15% of 1.
        assert singular_values.min() > 0.8 and singular_values.max() < 1.2, shape
        U, _, Vh = torch.linalg.svd(X, full_matrices=False)
        assert (Y - U @ Vh).norm() / (U @ Vh).norm() < 0.15, shape  # and it is X's polar factor


def test_orthogonalize_is_replaceable_and_sees_compute_dtype(golden):
    spec, tensors = load_unit(golden)
    for compute_dtype, seen_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]:
        seen = []

        def spy(X, ns_steps, seen=seen):
            seen.append((X.dtype, X.shape, ns_steps))
            return polar_express(X, ns_steps)

        params = unit_params(spec, tensors)
        optimizer = MuonAdamW(unit_groups(spec, params), compute_dtype=compute_dtype, orthogonalize=spy)
        unit_step(optimizer, params, spec, golden_grads(tensors, 0), 0)
        muon_groups = [g for g in spec["groups"] if g["kind"] == "muon"]
        assert len(seen) == len(muon_groups)
        assert all(dtype == seen_dtype and ns == 5 for dtype, _, ns in seen)
        assert params["sq0"].dtype == torch.float32  # only the orthogonalisation runs in bf16
        if compute_dtype == torch.float32:
            assert_matches(params["sq0"].detach(), tensors["step0.param.sq0"], "spy-wrapped step")


def test_adamw_on_bf16_params_does_the_math_in_fp32():
    gen = torch.Generator().manual_seed(3)
    start, grad = torch.randn(64, 16, generator=gen), torch.randn(64, 16, generator=gen) * 1e-3
    group = dict(kind="adamw", lr=0.3, betas=(0.8, 0.995), eps=1e-10, weight_decay=0.001)
    results = {}
    for dtype in (torch.bfloat16, torch.float32):
        p = nn.Parameter(start.to(torch.bfloat16).to(dtype))
        p.grad = grad.to(torch.bfloat16).to(dtype)
        MuonAdamW([dict(group, params=[p])]).step()
        results[dtype] = p.detach()
    assert results[torch.bfloat16].dtype == torch.bfloat16
    assert torch.equal(results[torch.bfloat16], results[torch.float32].to(torch.bfloat16))


@pytest.mark.slow
def test_compiled_kernels_match_eager(golden):
    """The torch.compile'd kernels (default on CUDA) against the eager reference, on CPU (~2 min)."""
    spec, tensors = load_unit(golden)
    results = []
    for compile in (False, True):
        params = unit_params(spec, tensors)
        optimizer = MuonAdamW(unit_groups(spec, params), compile=compile)
        for s in range(len(spec["steps"])):
            unit_step(optimizer, params, spec, golden_grads(tensors, s), s)
        results.append(params)
    for name, p in results[1].items():
        assert_matches(p.detach(), results[0][name].detach(), f"compiled {name}")


def test_optimizer_rejects_malformed_groups():
    p = nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([dict(kind="sgd", params=[p], lr=0.1)])
    with pytest.raises(ValueError, match="lacks"):
        MuonAdamW([dict(kind="muon", params=[p], lr=0.1)])
    q = nn.Parameter(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="one shape"):
        MuonAdamW([dict(kind="muon", params=[p, q], lr=0.1, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0)])


# ---------------------------------------------------------------- param groups


def meta_model(**overrides) -> GPT:
    with torch.device("meta"):
        return GPT(GPTConfig(**{**GOLDEN_CONFIG, **overrides}))


def test_param_groups_equal_nanochat_setup_optimizer(golden):
    expected = load_json(golden / "optim" / "config.json")["param_groups"]
    model = meta_model()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = build_param_groups(model, **GOLDEN_SETUP)
    assert len(groups) == len(expected)
    for got, want in zip(groups, expected, strict=True):
        assert [names[id(p)] for p in got["params"]] == want["params"]
        for key, value in want.items():
            if key != "params":
                assert got[key] == (tuple(value) if key == "betas" else value), (want["params"][0], key)


def test_param_groups_refuse_a_model_with_an_uncovered_parameter():
    model = meta_model()
    model.extra_scale = nn.Parameter(torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="extra_scale"):
        build_param_groups(model, **GOLDEN_SETUP)


# ---------------------------------------------------------------- distributed


def test_two_gloo_ranks_match_one_process(golden, tmp_path):
    """2 CPU ranks with different per-rank gradients (averaging to the golden ones) give the
    single-process params; the worker also resumes from per-rank state dicts halfway."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tests.dist_optim_worker", str(golden), str(tmp_path)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    per_rank = [load_file(tmp_path / f"params_rank{r}.safetensors") for r in range(2)]

    from tests.dist_optim_worker import case_groups, case_params, extra_grads  # it imports this module

    spec, tensors = load_unit(golden)
    params = case_params(spec, tensors)
    optimizer = MuonAdamW(case_groups(spec, params))
    for s in range(len(spec["steps"])):
        unit_step(optimizer, params, spec, {**golden_grads(tensors, s), **extra_grads(s)}, s)
        for rank, result in enumerate(per_rank):
            for name, p in params.items():
                assert_matches(result[f"step{s}.{name}"], p.detach(), f"rank {rank} step {s} {name}", rel=1e-6)
