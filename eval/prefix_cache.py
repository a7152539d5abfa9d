"""A KV cache that lets many rows continue from a prompt that was forwarded once.

`GPT.forward(idx, kv_cache=...)` reads `cache.pos` (the absolute position of idx[:, 0], for rotary),
`cache.prev_embedding` (the previous token's normed embedding, for smear; None means idx[:, 0]
has no predecessor), calls `cache.attend(layer, q, k, v, window)` and `cache.advance(T)`.

Used in two steps by the batched CORE scorer (`core.py`):
1. prefill: `PrefixCache(attention, pos=c)` forwards the shared prompts (G, S) starting at absolute
   position c; attention is the model's own causal windowed attention (banded block by block when
   it is the SDPA fallback and the prompt is much longer than the window), and the last `keep`
   keys and values of every layer are remembered (queries after the prompt can see no older key);
2. `cache.select(rows)` repeats each prompt's entry for each of its continuation rows; forwarding
   the continuations (R, T) then attends over [remembered keys, new keys] with the window mask.
"""

import torch

from baseline.attention import attention as default_attention
from baseline.attention import attention_with_cache, backend

BAND_CHUNK = 128  # queries per block of the banded prefill


def banded_attention(q, k, v, window: int) -> torch.Tensor:
    """Causal windowed attention computed block by block over each block's key band only.

    The same result as `attention(q, k, v, window)` (up to rounding), but SDPA with a window mask
    scores all T×T pairs; here each block of queries [a, b) scores keys [a - window, b) only.
    """
    t, out = q.size(1), []
    for a in range(0, t, BAND_CHUNK):
        b, lo = min(t, a + BAND_CHUNK), max(0, a - window)
        # attention_with_cache writes the block's own keys into its buffers, so give it copies
        keys, values = k[:, lo:b].clone(), v[:, lo:b].clone()
        out.append(attention_with_cache(q[:, a:b], k[:, a:b], v[:, a:b], keys, values, a - lo, window))
    return torch.cat(out, dim=1)


class PrefixCache:
    def __init__(self, attention, pos: int, keep: int):
        self.pos = pos
        self.prev_embedding: torch.Tensor | None = None  # (B, 1, C)
        self.keep = keep
        self._attention = attention
        self._keys: dict[int, torch.Tensor] = {}  # layer -> (B, keep, Hkv, D)
        self._values: dict[int, torch.Tensor] = {}

    def attend(self, layer: int, q, k, v, window: int) -> torch.Tensor:
        """q (B, T, H, D), k/v (B, T, Hkv, D) of the new tokens -> (B, T, H, D)."""
        if layer not in self._keys:  # prefill: a plain causal forward, remembering the tail
            if self.keep:
                self._keys[layer], self._values[layer] = k[:, -self.keep :], v[:, -self.keep :]
            if (
                self._attention is default_attention
                and backend(q.dtype, q.device) == "sdpa"
                and q.size(1) > window + BAND_CHUNK
            ):
                return banded_attention(q, k, v, window)
            return self._attention(q, k, v, window)
        old_k, old_v = self._keys[layer], self._values[layer]
        n_old, t = old_k.size(1), k.size(1)
        k_all = old_k.new_empty(k.size(0), n_old + t, *k.shape[2:])  # (B, n_old + T, Hkv, D)
        v_all = old_v.new_empty(v.size(0), n_old + t, *v.shape[2:])
        k_all[:, :n_old], v_all[:, :n_old] = old_k, old_v
        return attention_with_cache(q, k, v, k_all, v_all, n_old, window)

    def advance(self, t: int) -> None:
        self.pos += t

    def select(self, rows: torch.Tensor) -> "PrefixCache":
        """A cache for continuation rows: row r continues prompt rows[r] at this cache's position."""
        out = PrefixCache(self._attention, self.pos, self.keep)
        out._keys = {i: t.index_select(0, rows) for i, t in self._keys.items()}
        out._values = {i: t.index_select(0, rows) for i, t in self._values.items()}
        if self.prev_embedding is not None:
            out.prev_embedding = self.prev_embedding.index_select(0, rows)
        return out
