"""Causal sliding-window attention: FlashAttention on Hopper when it is there, PyTorch SDPA otherwise.

Tensors are in FlashAttention's layout, (B, T, H, D), so the model never transposes. A window W means
each query at position t sees keys t-W .. t (W+1 keys), like `flash_attn_func(..., window_size=(W, 0))`.

Chosen automatically, for bf16 on CUDA only, in this order (`backend()` says which; every run records it):
- "fa4": FlashAttention-4 (`pip install -e '.[fa4]'`, the `flash-attn-4` wheels from the package index,
  CuTe DSL kernels for Hopper and Blackwell, sm90+);
- "fa3": FlashAttention-3 from the `kernels` package (a Hub download, there only if the machine could
  fetch it once);
- "sdpa": PyTorch's scaled_dot_product_attention, everywhere else (and on CPU, always).
SPEEDRUN_ATTENTION=sdpa|fa3|fa4 forces one (an unavailable one falls back to SDPA).
"""

import functools
import os

import torch
import torch.nn.functional as F


@functools.cache
def _flash_attention_4():
    """FA4's flash_attn_func, or None (no CUDA, not Hopper or newer, `flash-attn-4` not installed)."""
    if os.environ.get("SPEEDRUN_ATTENTION", "fa4") != "fa4" or not torch.cuda.is_available():
        return None
    if torch.cuda.get_device_capability()[0] < 9:
        return None
    try:
        from flash_attn.cute import flash_attn_func  # optional: the [fa4] extra, CUDA sm90+ only

        return flash_attn_func
    except Exception:  # noqa: BLE001 -- any failure (not installed, no CUTLASS DSL for this CUDA) means "not FA4"
        return None


@functools.cache
def _flash_attention_3():
    """The FA3 interface module, or None (no CUDA, no `kernels` package, no cached kernel)."""
    if os.environ.get("SPEEDRUN_ATTENTION", "fa3") not in ("fa3", "fa4") or not torch.cuda.is_available():
        return None
    try:
        from kernels import get_kernel  # optional: fetches FA3 from the Hugging Face Hub, CUDA only

        major, _ = torch.cuda.get_device_capability()
        repo = "varunneal/flash-attention-3" if major == 9 else "kernels-community/flash-attn3"
        return get_kernel(repo).flash_attn_interface
    except Exception:  # noqa: BLE001 -- any failure (missing package, offline Hub) means "use SDPA"
        return None


def backend(dtype: torch.dtype, device: torch.device) -> str:
    """Which implementation `attention` will use for this dtype and device: 'fa4', 'fa3' or 'sdpa'."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        if _flash_attention_4() is not None:
            return "fa4"
        if _flash_attention_3() is not None:
            return "fa3"
    return "sdpa"


def _build_window_mask(t_q: int, t_k: int, window: int, device: torch.device) -> torch.Tensor:
    """Boolean (t_q, t_k) mask, True = attend. Query row r sits at absolute position r + (t_k - t_q)."""
    row = torch.arange(t_q, device=device).unsqueeze(1) + (t_k - t_q)
    col = torch.arange(t_k, device=device).unsqueeze(0)
    return (col <= row) & (row - col <= window)


_cached_window_mask = functools.lru_cache(maxsize=32)(_build_window_mask)


def _window_mask(t_q: int, t_k: int, window: int, device: torch.device) -> torch.Tensor:
    # Eager: build each mask once. Compiled: build it in the graph, where it is folded into the
    # kernel; an lru_cache call would break the graph at every short-window layer.
    if torch.compiler.is_compiling():
        return _build_window_mask(t_q, t_k, window, device)
    return _cached_window_mask(t_q, t_k, window, device)


def _sdpa(q, k, v, window: int):
    # q: (B, Tq, H, D), k/v: (B, Tk, Hkv, D); the queries are the last Tq positions of the keys.
    t_q, t_k = q.size(1), k.size(1)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    gqa = q.size(1) != k.size(1)
    if t_q == t_k and window >= t_q - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif t_q == 1:
        # One decode step: the window is a slice of the most recent W+1 keys, no mask needed.
        start = max(0, t_k - (window + 1))
        y = F.scaled_dot_product_attention(q, k[:, :, start:], v[:, :, start:], enable_gqa=gqa)
    else:
        mask = _window_mask(t_q, t_k, window, q.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)  # (B, Tq, H, D)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Causal attention of q (B, T, H, D) over k, v (B, T, Hkv, D) with a left window; -> (B, T, H, D)."""
    which = backend(q.dtype, q.device)
    if which == "fa4":
        return _flash_attention_4()(q, k, v, causal=True, window_size=(window, 0))[0]  # (out, lse)
    if which == "fa3":
        return _flash_attention_3().flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    return _sdpa(q, k, v, window)


def attention_with_cache(q, k_new, v_new, k_cache, v_cache, pos: int, window: int) -> torch.Tensor:
    """Write k_new/v_new (B, T, Hkv, D) into the caches at `pos`, then attend q over positions [0, pos+T)."""
    t = q.size(1)
    k_cache[:, pos : pos + t] = k_new
    v_cache[:, pos : pos + t] = v_new
    return _sdpa(q, k_cache[:, : pos + t], v_cache[:, : pos + t], window)
