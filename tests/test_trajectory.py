"""Six real training steps (model + groups + MuonAdamW + schedules) follow nanochat's golden trajectory.

Golden README §3 `optim/`: from model/perturbed.safetensors, 2 micro-batches per step, each loss
divided by 2 before backward, schedules with num_iterations=20 and warmup 2. The tolerances are the
README's: Muon and Adam amplify rounding in the first steps, so states are compared per tensor
against the size of the update, not elementwise.
"""

import pytest
from safetensors.torch import load_file

from baseline.gpt import GPT, GPTConfig
from baseline.optim import MuonAdamW, build_param_groups
from baseline.schedule import Schedule
from tests.conftest import load_json

GOLDEN_CONFIG = dict(
    sequence_len=256, vocab_size=4096, n_layer=4, n_head=2, n_kv_head=2, n_embd=128, window_pattern="SSSL"
)


def assert_update_matches(state: dict, expected: dict, start: dict, tol: float, when: str) -> None:
    """Per tensor ‖W − W_golden‖ / ‖W_golden − W_0‖ ≤ tol."""
    assert state.keys() == expected.keys()
    for key, want in expected.items():
        update = (want - start[key]).double().norm()
        error = (state[key] - want).double().norm()
        assert error <= tol * update, f"{when} {key}: ‖Δ‖/‖update‖ = {(error / update).item():.3g} > {tol}"


@pytest.fixture(scope="module")
def trajectory(golden):
    """Run the golden steps once; returns per-step losses and lrs and the states after steps 1 and 6."""
    config = load_json(golden / "optim" / "config.json")
    batches = load_file(golden / "optim" / "batches.safetensors")
    start = load_file(golden / "model" / "perturbed.safetensors")
    model = GPT(GPTConfig(**GOLDEN_CONFIG))
    model.load_state_dict(start, strict=True)
    optimizer = MuonAdamW(build_param_groups(model, **config["setup_optimizer_kwargs"]))
    schedule = Schedule(
        num_iterations=config["num_iterations"],
        weight_decay=config["setup_optimizer_kwargs"]["weight_decay"],
        warmup_steps=config["warmup_steps"],
        warmdown_ratio=config["warmdown_ratio"],
        final_lr_frac=config["final_lr_frac"],
    )
    grad_accum, steps, states = config["grad_accum"], [], {}
    for step in range(config["K"]):
        micro_losses = []
        for micro in range(grad_accum):
            i = step * grad_accum + micro
            loss = model(batches["inputs"][i], batches["targets"][i])
            micro_losses.append(loss.item())
            (loss / grad_accum).backward()
        lrm = schedule.lr_multiplier(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = schedule.muon_momentum(step)
                group["weight_decay"] = schedule.muon_weight_decay(step)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        steps.append(dict(micro_losses=micro_losses, group_lrs=[g["lr"] for g in optimizer.param_groups]))
        if step + 1 in (1, config["K"]):
            states[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return dict(start=start, steps=steps, states=states)


def test_micro_batch_losses_follow_nanochat(golden, trajectory):
    expected = load_json(golden / "optim" / "trace.json")["steps"]
    assert len(trajectory["steps"]) == len(expected)
    for s, (got, want) in enumerate(zip(trajectory["steps"], expected, strict=True)):
        rel = 2e-3 if s == len(expected) - 1 else 2e-4
        assert got["micro_losses"] == pytest.approx(want["micro_losses"], rel=rel), f"step {s}"
        assert got["group_lrs"] == pytest.approx(want["group_lrs"], rel=1e-12), f"step {s}"


def test_state_after_first_step_matches_nanochat(golden, trajectory):
    expected = load_file(golden / "optim" / "state_step1.safetensors")
    assert_update_matches(trajectory["states"][1], expected, trajectory["start"], 2e-2, "after step 1")


def test_state_after_six_steps_matches_nanochat(golden, trajectory):
    expected = load_file(golden / "optim" / "state_step6.safetensors")
    assert_update_matches(trajectory["states"][6], expected, trajectory["start"], 5e-2, "after step 6")
