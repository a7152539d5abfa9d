"""FlashAttention (FA4 from the package index, or FA3) computes what SDPA computes, windows included (CUDA only)."""

import pytest
import torch

from baseline import attention

needs_cuda_flash = pytest.mark.skipif(
    not torch.cuda.is_available() or attention.backend(torch.bfloat16, torch.device("cuda")) == "sdpa",
    reason="needs a CUDA GPU with FlashAttention (pip install -e '.[fa4]' on sm90+)",
)


def test_cpu_and_fp32_always_use_sdpa():
    assert attention.backend(torch.float32, torch.device("cpu")) == "sdpa"
    assert attention.backend(torch.bfloat16, torch.device("cpu")) == "sdpa"


@needs_cuda_flash
@pytest.mark.parametrize("window", [255, 128, 16, 0])
def test_flash_attention_equals_sdpa_forward_and_backward(window):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 256, 4, 64, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3))
    grads = []
    for fn in (attention.attention, attention._sdpa):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        out = fn(qq, kk, vv, window)
        out.float().square().sum().backward()
        grads.append((out.float(), qq.grad.float(), kk.grad.float(), vv.grad.float()))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)  # bf16: a few ulps apart


@needs_cuda_flash
def test_the_golden_model_gives_the_same_logits_with_either_attention(golden, monkeypatch):
    from safetensors.torch import load_file

    from baseline.checkpoint import build_model, load_state_into
    from baseline.gpt import GPTConfig
    from tests.test_gpt import GOLDEN_CONFIG

    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cuda", torch.bfloat16)
    load_state_into(model, load_file(golden / "model" / "perturbed.safetensors"))
    idx = torch.randint(0, GOLDEN_CONFIG["vocab_size"], (2, GOLDEN_CONFIG["sequence_len"]), device="cuda")
    with torch.no_grad():
        flash = model(idx)
        monkeypatch.setattr(attention, "backend", lambda dtype, device: "sdpa")
        sdpa = model(idx)
    torch.testing.assert_close(flash, sdpa, atol=5e-2, rtol=5e-2)
