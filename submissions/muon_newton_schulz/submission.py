"""Muon with the original Newton–Schulz quintic instead of Polar Express: an optimizer change.

    speedrun run muon_newton_schulz --track cpu-books --seeds 3

Everything else is the baseline's MuonAdamW (same groups, learning rates, NorMuon, cautious decay); only
the orthogonalisation differs. Newton–Schulz with Keller Jordan's fixed coefficients (a, b, c) =
(3.4445, -4.7750, 2.0315) drives singular values into roughly [0.7, 1.2] rather than to 1, so the
update differs from the baseline's by far more than the kernel tolerance: it is passed to MuonAdamW
through build_optimizer, not through KERNELS.
"""

import torch

from baseline.optim import MuonAdamW, build_param_groups

METADATA = {
    "authors": ["speedrun maintainers"],
    "description": "Muon's orthogonalisation by the original Newton–Schulz quintic (5 steps) instead of Polar Express",
    "references": [
        "Jordan et al. 2024, Muon: An optimizer for hidden layers in neural networks",
        "Amsel et al. 2025, The Polar Express: Optimal Matrix Sign Methods and Their Application to Muon",
    ],
}

NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)  # tuned to maximise the slope at 0 (Jordan et al. 2024)


def newton_schulz(X: torch.Tensor, ns_steps: int) -> torch.Tensor:
    """Approximate polar factor of each matrix of X (K, m, n): X ← aX + (bA + cA²)X with A = XXᵀ on the wide side."""
    a, b, c = NEWTON_SCHULZ_COEFFS
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm ≤ Frobenius norm ≤ 1
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # (K, n, m): the Gram matrix is then the smaller (n, n)
    for _ in range(ns_steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def build_optimizer(model, plan, compute_dtype):
    groups = build_param_groups(model, **plan.optimizer_kwargs())
    return MuonAdamW(groups, compute_dtype=compute_dtype, orthogonalize=newton_schulz)
