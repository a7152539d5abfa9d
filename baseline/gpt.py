"""The GPT of nanochat's speedrun recipe (commit 92d63d4), and nothing else.

Architecture, in the order the forward runs (fact sheet §1, ../shared/docs/nanochat-recipe.md):
- token embedding, parameter-free RMSNorm, then "smear": each token mixes in a gated copy of the
  previous token's embedding;
- per layer: x = resid_lambda·x + x0_lambda·x0, then a pre-norm block of
  attention (rotary → QK-norm → ×1.2, sliding windows "SSSL" with the last layer long, value
  embeddings mixed into v on alternate layers, ResFormer-style) and a relu² MLP;
- "backout": the output of the middle layer, scaled, is subtracted before the final norm;
- untied lm_head over the vocab padded to a multiple of 64, logits softcapped at 15.

No biases and no norm weights anywhere. State-dict keys equal nanochat's, so its checkpoints load.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from baseline.kernels import Kernels, softcap

ROTARY_BASE = 100_000
ROTARY_TABLE_FACTOR = 10  # rotary tables cover 10 × sequence_len positions (for long eval prompts)
QK_SCALE = 1.2  # q and k are multiplied by this after QK-norm; attention keeps the 1/sqrt(D) scale
SMEAR_CHANNELS = 24  # the smear gate reads the first 24 channels of the token
VE_GATE_CHANNELS = 12  # the value-embedding gate reads the first 12 channels of the block input


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 32768
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int = 6
    n_embd: int = 768
    window_pattern: str = "SSSL"

    def to_dict(self) -> dict:
        return asdict(self)


def padded_vocab_size(vocab_size: int) -> int:
    return math.ceil(vocab_size / 64) * 64


def has_value_embedding(layer: int, n_layer: int) -> bool:
    """Alternate layers, always including the last one."""
    return layer % 2 == (n_layer - 1) % 2


def window_sizes(config: GPTConfig) -> list[int]:
    """Left window per layer: 'L' = sequence_len, 'S' = a quarter of it rounded up to 128; last layer L."""
    short = math.ceil(config.sequence_len / 4 / 128) * 128
    sizes = []
    for i in range(config.n_layer):
        kind = config.window_pattern[i % len(config.window_pattern)]
        if kind not in "SL":
            raise ValueError(f"window_pattern {config.window_pattern!r} may only contain 'S' and 'L'")
        sizes.append(config.sequence_len if kind == "L" or i == config.n_layer - 1 else short)
    return sizes


class Linear(nn.Linear):
    """Bias-free Linear whose fp32 master weight is cast to the input's dtype (nanochat's autocast)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight.to(x.dtype))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, kernels: Kernels):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        d, hd = config.n_embd, self.head_dim
        self.c_q = Linear(d, self.n_head * hd)
        self.c_k = Linear(d, self.n_kv_head * hd)
        self.c_v = Linear(d, self.n_kv_head * hd)
        self.c_proj = Linear(d, d)
        if has_value_embedding(layer, config.n_layer):
            self.ve_gate = Linear(VE_GATE_CHANNELS, self.n_kv_head)
        self.kernels = kernels

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            # Value residual: a per-token, per-kv-head gate in (0, 3) mixes the token's value embedding in.
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        kn = self.kernels
        q, k = kn.rotary(q, cos, sin), kn.rotary(k, cos, sin)
        q, k = kn.rms_norm(q) * QK_SCALE, kn.rms_norm(k) * QK_SCALE
        if kv_cache is None:
            y = kn.attention(q, k, v, window)
        else:
            y = kv_cache.attend(self.layer, q, k, v, window)
        return self.c_proj(y.contiguous().view(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, kernels: Kernels):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.kernels = kernels

    def forward(self, x):
        return self.c_proj(self.kernels.mlp_activation(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int, kernels: Kernels):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer, kernels)
        self.mlp = MLP(config, kernels)
        self.norm = kernels.rms_norm

    def forward(self, x, ve, cos, sin, window, kv_cache=None):
        x = x + self.attn(self.norm(x), ve, cos, sin, window, kv_cache)
        return x + self.mlp(self.norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, kernels: Kernels | None = None):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        if config.n_head % config.n_kv_head:
            raise ValueError(f"n_head {config.n_head} is not a multiple of n_kv_head {config.n_kv_head}")
        if (config.n_embd // config.n_head) % 2:
            raise ValueError(f"head dim {config.n_embd // config.n_head} must be even for rotary")
        self.config = config
        self.kernels = kernels or Kernels()
        self.window_sizes = window_sizes(config)
        self.backout_layer = config.n_layer // 2
        vocab = padded_vocab_size(config.vocab_size)
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        # Scalars first: nanochat registers them on the GPT itself, so they lead its state_dict.
        self.resid_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.empty(config.n_layer))
        self.smear_lambda = nn.Parameter(torch.empty(1))
        self.backout_lambda = nn.Parameter(torch.empty(1))
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, config.n_embd),
                "h": nn.ModuleList(Block(config, i, self.kernels) for i in range(config.n_layer)),
            }
        )
        self.lm_head = Linear(config.n_embd, vocab)
        self.smear_gate = Linear(SMEAR_CHANNELS, 1)
        self.value_embeds = nn.ModuleDict(
            {
                str(i): nn.Embedding(vocab, kv_dim)
                for i in range(config.n_layer)
                if has_value_embedding(i, config.n_layer)
            }
        )
        self._set_rotary(self.transformer.wte.weight.device, torch.float32)

    # ---------------------------------------------------------------- init

    def _set_rotary(self, device, dtype, table_len: int | None = None):
        """Non-persistent cos/sin tables (1, L, 1, D/2); their dtype is the model's compute dtype."""
        head_dim = self.config.n_embd // self.config.n_head
        table_len = table_len or ROTARY_TABLE_FACTOR * self.config.sequence_len
        if torch.device(device).type == "meta":
            cos = sin = torch.empty(1, table_len, 1, head_dim // 2, device="meta", dtype=dtype)
        else:
            channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
            inv_freq = 1.0 / (ROTARY_BASE ** (channels / head_dim))
            t = torch.arange(table_len, dtype=torch.float32, device=device)
            freqs = torch.outer(t, inv_freq)
            cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
            cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def extend_rotary(self, table_len: int):
        """Grow the rotary tables (e.g. for eval prompts longer than 10 × sequence_len)."""
        if table_len > self.cos.size(1):
            self._set_rotary(self.cos.device, self.cos.dtype, table_len)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.cos.dtype

    @torch.no_grad()
    def init_weights(self, compute_dtype: torch.dtype = torch.float32):
        """Fill every parameter from the device's global RNG in nanochat's exact draw order.

        Call after `to_empty(device=...)` with the seed set. With a bf16 compute dtype the
        embeddings (wte, value embeds) are stored in bf16, as nanochat does on GPUs.
        """
        cfg = self.config
        s = math.sqrt(3) / math.sqrt(cfg.n_embd)  # uniform(-s, s) has std 1/sqrt(d)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=0.8)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * s, 0.4 * s)
            nn.init.zeros_(block.mlp.c_proj.weight)
        n = max(cfg.n_layer - 1, 1)
        for i in range(cfg.n_layer):
            self.resid_lambdas[i] = 1.15 - 0.10 * i / n
            self.x0_lambdas[i] = 0.20 - 0.15 * i / n
        self.smear_lambda.fill_(0.0)
        self.backout_lambda.fill_(0.2)
        nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -s, s)
        for block in self.transformer.h:
            if hasattr(block.attn, "ve_gate"):
                nn.init.uniform_(block.attn.ve_gate.weight, 0.0, 0.02)
        if compute_dtype == torch.bfloat16:
            self.transformer.wte.to(dtype=compute_dtype)
            self.value_embeds.to(dtype=compute_dtype)
        self._set_rotary(self.transformer.wte.weight.device, compute_dtype)

    # ---------------------------------------------------------------- counts

    def num_scaling_params(self) -> dict[str, int]:
        """Parameter counts by kind; the horizon uses transformer_matrices + lm_head (fact sheet §2)."""
        counts = {
            "wte": self.transformer.wte.weight.numel(),
            "value_embeds": sum(p.numel() for p in self.value_embeds.parameters()),
            "lm_head": self.lm_head.weight.numel(),
            "transformer_matrices": sum(p.numel() for p in self.transformer.h.parameters()),
            "scalars": sum(
                p.numel()
                for p in (self.resid_lambdas, self.x0_lambdas, self.smear_gate.weight)
                + (self.smear_lambda, self.backout_lambda)
            ),
        }
        counts["total"] = sum(counts.values())
        assert counts["total"] == sum(p.numel() for p in self.parameters())
        return counts

    def num_matmul_params(self) -> int:
        """Weights of every `Linear` (lm_head over the padded vocab, gates included)."""
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, Linear))

    def estimate_flops(self) -> int:
        """Training FLOPs per token: 6 per matmul weight plus attention scores over each layer's window."""
        head_dim = self.config.n_embd // self.config.n_head
        t = self.config.sequence_len
        attn = sum(12 * self.config.n_head * head_dim * min(w, t) for w in self.window_sizes)
        return 6 * self.num_matmul_params() + attn

    # ---------------------------------------------------------------- forward

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """idx (B, T) -> fp32 softcapped logits (B, T, vocab_size), or the loss when targets are given."""
        B, T = idx.shape
        pos = 0 if kv_cache is None else kv_cache.pos
        if pos + T > self.cos.size(1):
            raise ValueError(f"sequence of {pos + T} tokens exceeds the rotary table ({self.cos.size(1)})")
        cos, sin = self.cos[:, pos : pos + T], self.sin[:, pos : pos + T]
        dtype = self.compute_dtype
        norm = self.kernels.rms_norm

        x = norm(self.transformer.wte(idx).to(dtype))  # (B, T, C)
        # Smear: x[t] += λ·sigmoid(gate(x[t][:24]))·x[t-1] on the normed embeddings; with a KV cache
        # the previous token's embedding comes from the cache, otherwise position 0 is left alone.
        prev = None if kv_cache is None else kv_cache.prev_embedding
        gate = self.smear_lambda.to(dtype) * torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))
        if prev is None:
            smeared = x[:, 1:] + gate[:, 1:] * x[:, :-1]
            new_x = torch.cat([x[:, :1], smeared], dim=1)
        else:
            prev_x = torch.cat([prev, x[:, :-1]], dim=1)
            new_x = x + gate * prev_x
        if kv_cache is not None:
            kv_cache.prev_embedding = x[:, -1:]
        x = new_x
        x0 = x

        x_backout = None
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx).to(dtype) if str(i) in self.value_embeds else None
            x = block(x, ve, cos, sin, self.window_sizes[i], kv_cache)
            if i == self.backout_layer:
                x_backout = x
        x = x - self.backout_lambda.to(dtype) * x_backout
        x = norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)

        logits = self.lm_head(x)[..., : self.config.vocab_size].float()  # (B, T, V)
        if targets is None:
            return softcap(logits)
        return self.kernels.softcap_cross_entropy(logits, targets, loss_reduction)

    @torch.no_grad()
    def generate(self, tokens: list[int], max_tokens: int, temperature=1.0, top_k=None, seed=42):
        """Naive generation (full forward per token, no cache): the slow reference for the engine."""
        device = self.cos.device
        rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]  # (1, V)
            if temperature == 0:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            else:
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = torch.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=rng)
            ids = torch.cat([ids, next_id], dim=1)
            yield next_id.item()
