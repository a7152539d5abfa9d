"""The model equals nanochat's: same init bits, same logits, losses and gradients on the golden cases."""

import pytest
import torch
from safetensors.torch import load_file

from baseline.gpt import GPT, GPTConfig, has_value_embedding, window_sizes
from tests.conftest import load_json

GOLDEN_CONFIG = dict(
    sequence_len=256, vocab_size=4096, n_layer=4, n_head=2, n_kv_head=2, n_embd=128, window_pattern="SSSL"
)


def build(config: GPTConfig, seed: int = 42) -> GPT:
    """Build as base_train does: on meta, to_empty, then init from the seeded CPU generator."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


@pytest.fixture(scope="module")
def model_json(golden):
    return load_json(golden / "model" / "model.json")


@pytest.fixture(scope="module")
def batch(golden):
    return load_file(golden / "model" / "batch.safetensors")


def test_init_is_bitwise_nanochats_and_keys_match(golden, model_json):
    model = build(GPTConfig(**GOLDEN_CONFIG))
    state = model.state_dict()
    assert list(state) == model_json["state_dict_keys"]
    assert {k: list(v.shape) for k, v in state.items()} == model_json["state_dict_shapes"]
    expected = load_file(golden / "model" / "init.safetensors")
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_derived_structure_matches(model_json):
    config = GPTConfig(**GOLDEN_CONFIG)
    model = build(config)
    assert [[w, 0] for w in window_sizes(config)] == model_json["window_sizes"]
    assert [i for i in range(4) if has_value_embedding(i, 4)] == model_json["value_embed_layers"]
    assert model.backout_layer == model_json["backout_layer"]
    assert model.cos.size(1) == model_json["rotary_table_len"]
    assert model.num_scaling_params() == model_json["num_scaling_params"]
    assert model.num_matmul_params() == model_json["num_matmul_params"]
    assert model.estimate_flops() == model_json["estimate_flops"]


@pytest.mark.parametrize("state", ["init", "perturbed"])
def test_forward_matches_golden_logits_and_losses(golden, model_json, batch, state):
    model = build(GPTConfig(**GOLDEN_CONFIG))
    model.load_state_dict(load_file(golden / "model" / f"{state}.safetensors"))
    out = load_file(golden / "model" / f"{state}_outputs.safetensors")
    with torch.no_grad():
        logits = model(batch["inputs"])
        loss_tokens = model(batch["inputs"], batch["targets"], loss_reduction="none")
        loss = model(batch["inputs"], batch["targets"])
    assert logits.dtype == torch.float32 and logits.shape == (2, 256, 4096)
    sel = logits[:, out["positions"]]
    tol = 1e-5 * out["logits_sel"].abs().max().item() + 1e-7
    assert (sel - out["logits_sel"]).abs().max().item() <= tol
    assert (loss_tokens - out["loss_tokens"]).abs().max().item() <= 1e-4
    assert (torch.logsumexp(logits, -1) - out["logsumexp"]).abs().max().item() <= 1e-4
    decisive = out["top2_gap"] > 1e-4
    assert torch.equal(logits.argmax(-1)[decisive], out["argmax"][decisive])
    assert loss.item() == pytest.approx(model_json[state]["loss"], rel=1e-5)


def test_gradients_match_golden(golden, batch):
    model = build(GPTConfig(**GOLDEN_CONFIG))
    model.load_state_dict(load_file(golden / "model" / "perturbed.safetensors"))
    model(batch["inputs"], batch["targets"]).backward()
    reference = load_json(golden / "model" / "perturbed_grads.json")["grads"]
    small = load_file(golden / "model" / "perturbed_grads_small.safetensors")
    for name, param in model.named_parameters():
        ref, g = reference[name], param.grad.double()
        assert abs(g.norm().item() - ref["norm"]) <= 1e-3 * ref["norm"], name
        if name in small:
            assert (g - small[name].double()).norm().item() <= 1e-3 * ref["norm"], name
        if "sample_flat_idx" in ref:
            sampled = g.flatten()[torch.tensor(ref["sample_flat_idx"])]
            err = (sampled - torch.tensor(ref["sample_values"], dtype=torch.float64)).abs().max().item()
            assert err <= 1e-4 * ref["norm"], name
        if "nonzero_rows" in ref:
            rows = torch.nonzero(g.abs().sum(1)).flatten().tolist()
            assert rows == ref["nonzero_rows"], name


def test_loss_ignores_minus_one_targets(batch):
    model = build(GPTConfig(**GOLDEN_CONFIG), seed=3)
    targets = batch["targets"].clone()
    targets[:, 100:] = -1
    with torch.no_grad():
        full = model(batch["inputs"], targets, loss_reduction="none")
        mean = model(batch["inputs"], targets)
    assert torch.all(full[:, 100:] == 0)
    assert mean.item() == pytest.approx(full[:, :100].mean().item(), rel=1e-6)


def test_attention_is_causal_and_windowed():
    """Changing token t must leave every logit before t untouched (causality)."""
    config = GPTConfig(sequence_len=256, vocab_size=512, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = build(config, seed=0)
    for p in model.parameters():  # zero-init projections would hide attention entirely
        p.data.add_(0.05 * torch.randn_like(p))
    idx = torch.randint(0, 512, (1, 200))
    changed = idx.clone()
    changed[0, 150] = (idx[0, 150] + 1) % 512
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :150], b[:, :150])
    assert not torch.equal(a[:, 150:], b[:, 150:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=130, n_head=4, n_kv_head=4), "not divisible by n_head"),
        (dict(n_embd=128, n_head=4, n_kv_head=3), "not a multiple of n_kv_head"),
        (dict(window_pattern="SXL"), "may only contain"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(kwargs, message):
    config = GPTConfig(**{**GOLDEN_CONFIG, **kwargs})
    with pytest.raises(ValueError, match=message):
        GPT(config)
