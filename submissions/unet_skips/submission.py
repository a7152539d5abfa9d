"""unet_skips: U-net skip connections from the first half of the layers to the second (open division).

    speedrun run unet_skips --track cpu-books --seeds 5

nanochat's GPT, plus: layer n-1-i adds skip_weights[i] × (the output of layer i) to its input, for each i in
the first half (i < n // 2): the outermost layers pair up first, as in a U-net. skip_weights are learned
scalars starting at 1. Everything else is the baseline's, the initial weights included (the skip weights
draw nothing from the RNG), so a run differs from the baseline's only by the skips. The idea and its
initialisation are modded-nanogpt's record of 2024-11-10 by @brendanh0gan (README.md cites it).
"""

import torch
import torch.nn as nn

from baseline.checkpoint import build_model as build_gpt
from baseline.gpt import GPT, SMEAR_CHANNELS
from baseline.kernels import softcap

METADATA = {
    "authors": ["speedrun maintainers"],
    "description": "U-net skips: layer n-1-i adds a learned scalar times layer i's output, for the first half's layers",
    "references": [
        "modded-nanogpt record 2024-11-10, U-net pattern skip connections (@brendanh0gan): "
        "https://github.com/KellerJordan/modded-nanogpt/tree/master/records/111024_UNetDoubleLr",
        "Ronneberger, Fischer & Brox 2015, U-Net: Convolutional Networks for Biomedical Image Segmentation",
    ],
}


class UNetGPT(GPT):
    """The baseline GPT whose second half of layers reads the first half's outputs, outermost pairs first."""

    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        self.skip_weights = nn.Parameter(torch.empty(config.n_layer // 2))  # (n // 2,): AdamW, a "scalars" role

    @torch.no_grad()
    def init_weights(self, compute_dtype=torch.float32):
        super().init_weights(compute_dtype)
        self.skip_weights.fill_(1.0)  # modded-nanogpt's start: every skip fully open

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """baseline.gpt.GPT.forward with the skips added before the second half's blocks (marked below)."""
        B, T = idx.shape
        pos = 0 if kv_cache is None else kv_cache.pos
        if pos + T > self.cos.size(1):
            raise ValueError(f"sequence of {pos + T} tokens exceeds the rotary table ({self.cos.size(1)})")
        cos, sin = self.cos[:, pos : pos + T], self.sin[:, pos : pos + T]
        dtype = self.compute_dtype
        norm = self.kernels.rms_norm

        x = norm(self.transformer.wte(idx).to(dtype))  # (B, T, C)
        prev = None if kv_cache is None else kv_cache.prev_embedding
        gate = self.smear_lambda.to(dtype) * torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))
        if prev is None:
            new_x = torch.cat([x[:, :1], x[:, 1:] + gate[:, 1:] * x[:, :-1]], dim=1)
        else:
            new_x = x + gate * torch.cat([prev, x[:, :-1]], dim=1)
        if kv_cache is not None:
            kv_cache.prev_embedding = x[:, -1:]
        x = x0 = new_x

        n = len(self.transformer.h)
        skips = []  # the outputs of layers 0 .. n//2 - 1, (B, T, C) each
        x_backout = None
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            if n - 1 - i < len(self.skip_weights):  # ---- the U-net skip: layer n-1-j reads layer j
                x = x + self.skip_weights[n - 1 - i].to(dtype) * skips[n - 1 - i]
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.window_sizes[i], kv_cache)
            if i < len(self.skip_weights):
                skips.append(x)
            if i == self.backout_layer:
                x_backout = x
        x = norm(x - self.backout_lambda.to(dtype) * x_backout)
        if kv_cache is not None:
            kv_cache.advance(T)

        logits = self.lm_head(x)[..., : self.config.vocab_size].float()  # (B, T, V)
        if targets is None:
            return softcap(logits)
        return self.kernels.softcap_cross_entropy(logits, targets, loss_reduction)


def build_model(plan, device, compute_dtype):
    return build_gpt(plan.model_config, device, compute_dtype, model_class=UNetGPT)
