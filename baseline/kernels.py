"""The named operations of the frozen model, each replaceable by a plug-in with an equivalent kernel.

`Kernels()` holds the baseline implementation of every operation. A submission may hand the model
a `Kernels(...)` with some fields replaced (a fused RMSNorm, a Triton attention, ...); the model's
architecture and weights stay the baseline's, so the frozen eval can load the result without any
submission code. The submission contract checks each replacement against these references.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baseline.attention import attention

SOFTCAP = 15.0  # logits are squashed to (-15, 15) by 15 * tanh(x / 15)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim with torch's default eps (machine eps of the dtype)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split rotary on x (B, T, H, D) with cos/sin (1, T, 1, D/2).

    nanochat's sign convention: [x1·cos + x2·sin, −x1·sin + x2·cos], a rotation by −θ. Only relative
    angles matter for attention, but the sign must match to load nanochat checkpoints.
    """
    d = x.size(3) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], dim=3)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """The MLP activation, relu(x)² (Primer, So et al. 2021)."""
    return F.relu(x).square()


def softcap(logits: torch.Tensor) -> torch.Tensor:
    return SOFTCAP * torch.tanh(logits / SOFTCAP)


def softcap_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of softcapped fp32 logits (B, T, V) against targets (B, T); -1 targets are ignored.

    reduction 'mean' gives the scalar training loss, 'none' the per-token loss (B, T) used by bpb.
    """
    logits = softcap(logits)
    loss = F.cross_entropy(
        logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction
    )
    return loss.view(targets.shape) if reduction == "none" else loss


@dataclass(frozen=True)
class Kernels:
    """One callable per named operation; the defaults are the baseline."""

    attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] = attention
    rms_norm: Callable[[torch.Tensor], torch.Tensor] = rms_norm
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = rotary
    mlp_activation: Callable[[torch.Tensor], torch.Tensor] = relu_squared
    softcap_cross_entropy: Callable[..., torch.Tensor] = softcap_cross_entropy
