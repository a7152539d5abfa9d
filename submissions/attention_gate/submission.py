"""attention_gate: a sigmoid gate per head on the attention output, read from 12 channels (open division).

    speedrun run attention_gate --track cpu-books --seeds 5

nanochat's GPT, plus in every layer: y_h ← sigmoid(attn_gate(x[..., :12]))_h · y_h, where y_h is head h's
attention output at a token and x the (normed) block input there, before the heads are merged and projected.
A head can then do nothing at a token without parking its attention on a sink token (with sliding windows
the BOS sink is not always in reach). attn_gate is a (n_head, 12) matrix per layer, zero at the start (every
gate 0.5), trained by Muon like nanochat's own ve_gate. The rest, initial weights included, is the baseline's.
The idea is modded-nanogpt's sparse attention gate (record 2025-08-23, @classiclarryd), a sparse form of
gated attention (Qiu et al. 2025); README.md cites both.
"""

import torch

from baseline.checkpoint import build_model as build_gpt
from baseline.gpt import GPT, QK_SCALE, VE_GATE_CHANNELS, CausalSelfAttention, Linear

METADATA = {
    "authors": ["speedrun maintainers"],
    "description": "a per-head sigmoid gate on the attention output, from 12 channels of the block input (zero init)",
    "references": [
        "modded-nanogpt record 2025-08-23, sparse attention gate (@classiclarryd): "
        "https://github.com/KellerJordan/modded-nanogpt/tree/master/records/track_1_short/2025-08-23_SparseAttnGate",
        "Qiu et al. 2025, Gated Attention for Large Language Models: Non-linearity, Sparsity, and Attention-Sink-Free",
    ],
}

GATE_CHANNELS = 12  # modded-nanogpt found 12 channels of the residual stream enough (as nanochat's ve_gate reads)


class GatedAttention(CausalSelfAttention):
    def __init__(self, config, layer, kernels):
        super().__init__(config, layer, kernels)
        self.attn_gate = Linear(GATE_CHANNELS, self.n_head)  # (H, 12)

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        """CausalSelfAttention.forward with the gate applied to each head's output (marked below)."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        kn = self.kernels
        q, k = kn.rotary(q, cos, sin), kn.rotary(k, cos, sin)
        q, k = kn.rms_norm(q) * QK_SCALE, kn.rms_norm(k) * QK_SCALE
        y = kn.attention(q, k, v, window) if kv_cache is None else kv_cache.attend(self.layer, q, k, v, window)
        y = y * torch.sigmoid(self.attn_gate(x[..., :GATE_CHANNELS])).unsqueeze(-1)  # ---- the gate: (B, T, H, 1)
        return self.c_proj(y.contiguous().view(B, T, -1))


class GatedGPT(GPT):
    """The baseline GPT with GatedAttention in every block (same names, plus attn_gate.weight per layer)."""

    def __init__(self, config, kernels=None):
        super().__init__(config, kernels)
        for i, block in enumerate(self.transformer.h):
            block.attn = GatedAttention(config, i, self.kernels)

    @torch.no_grad()
    def init_weights(self, compute_dtype=torch.float32):
        super().init_weights(compute_dtype)  # the baseline's draws, in its order; the gates draw nothing
        for block in self.transformer.h:
            block.attn.attn_gate.weight.zero_()  # sigmoid(0) = 0.5 on every head at the start


def build_model(plan, device, compute_dtype):
    return build_gpt(plan.model_config, device, compute_dtype, model_class=GatedGPT)
