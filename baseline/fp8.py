"""fp8 training for the large Linears: nanochat's `--fp8`, tensorwise dynamic scaling only (fact sheet §10).

    n = convert_to_fp8(model)        # after init_weights, before torch.compile; returns how many converted
    with disabled_fp8(model):        # bpb, CORE and sampling run the plain bf16/fp32 Linears
        evaluate(model)

A Linear does three matmuls: out = x·Wᵀ (forward), grad_x = g·W and grad_W = gᵀ·x (backward).
`Float8Linear` runs all three through `torch._scaled_mm`: x and W are quantised to float8_e4m3fn
(max 448, 3 mantissa bits) and g to float8_e5m2 (max 57344, wider range for gradients), each with one
dynamic scale per tensor, `scale = fp8_max / max|t|`. The forward accumulates with
`use_fast_accum=True`, the backward with `use_fast_accum=False`; the backward reuses the forward's fp8
copies of x and W. The three matmuls are one autograd Function under `torch._dynamo.allow_in_graph`,
so torch.compile keeps it as one opaque node (as nanochat; torchao's tensor subclass is not used).

Each `Float8Linear` shares the original module's weight Parameter and keeps its name, so the optimizer
groups and the state_dict are unchanged by conversion. Eligible: every `Linear` whose in and out
features are multiples of 16 and whose smaller side is >= 128 (cuBLAS fp8 needs dims divisible by 16;
small matmuls are not worth it). In the GPT that is every attention/MLP matrix and lm_head; ve_gate
(12 -> kv heads) and smear_gate (24 -> 1) stay plain.

FLOPs: `Float8Linear` subclasses `baseline.gpt.Linear`, so `GPT.estimate_flops` (which counts the
weights of `Linear` modules) is the same before and after conversion. nanochat at 92d63d4 counts only
its own `Linear` class after converting, so its fp8 runs report ~12x too few FLOPs (fact sheet §8);
we deliberately do not reproduce that quirk.
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from baseline.gpt import Linear

E4M3 = torch.float8_e4m3fn  # x and W: max 448
E5M2 = torch.float8_e5m2  # gradients: max 57344
AMAX_EPS = 1e-12  # an all-zero tensor gets a large finite scale instead of inf
MIN_FP8_FEATURES = 128  # a Linear converts only if min(in, out) >= this ...
FP8_DIM_MULTIPLE = 16  # ... and both in and out are multiples of this (cuBLAS fp8 requirement)
RECIPES = ("tensorwise",)


@torch.no_grad()
def quantize(t: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensorwise dynamic scaling: (fp8 copy of t·scale, 1/scale as fp32 scalar) for `_scaled_mm`.

    The scale is divided in fp64 then rounded to fp32 (as torchao/nanochat: keeps compile and eager
    bit-identical); the clamp saturates, because a plain cast to fp8 does not.
    """
    fp8_max = torch.finfo(fp8_dtype).max
    amax = t.float().abs().max()
    scale = (fp8_max / amax.double().clamp(min=AMAX_EPS)).float()
    t_fp8 = (t.float() * scale).clamp(-fp8_max, fp8_max).to(fp8_dtype)
    return t_fp8.contiguous(), scale.reciprocal()


def _col_major(t: torch.Tensor) -> torch.Tensor:
    """Same values and shape, column-major memory: `_scaled_mm` wants its second operand that way."""
    return t.t().contiguous().t()


@torch._dynamo.allow_in_graph
class _Float8Matmul(torch.autograd.Function):
    """out = x·Wᵀ with x (M, K) and W (N, K) in e4m3, out in x's dtype; backward with g in e5m2."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x_fp8, x_inv = quantize(x, E4M3)  # (M, K)
        w_fp8, w_inv = quantize(weight, E4M3)  # (N, K); .t() is (K, N) column-major, no copy
        ctx.save_for_backward(x_fp8, x_inv, w_fp8, w_inv)
        return torch._scaled_mm(
            x_fp8, w_fp8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=x.dtype, use_fast_accum=True
        )  # (M, N)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_fp8, x_inv, w_fp8, w_inv = ctx.saved_tensors
        g_fp8, g_inv = quantize(grad_out, E5M2)  # (M, N)
        grad_x = torch._scaled_mm(
            g_fp8, _col_major(w_fp8), scale_a=g_inv, scale_b=w_inv, out_dtype=grad_out.dtype, use_fast_accum=False
        )  # (M, N)·(N, K) -> (M, K)
        # The weight gradient comes out in the compute dtype; autograd casts it to the fp32 master's dtype,
        # the same precision as Linear's `weight.to(bf16)` backward.
        grad_w = torch._scaled_mm(
            g_fp8.t().contiguous(),
            _col_major(x_fp8),
            scale_a=g_inv,
            scale_b=x_inv,
            out_dtype=grad_out.dtype,
            use_fast_accum=False,
        )  # (N, M)·(M, K) -> (N, K)
        return grad_x, grad_w


class Float8Linear(Linear):
    """A bias-free `Linear` whose three matmuls run in fp8; the weight stays the fp32 master.

    The input is cast to the model's compute dtype (stored at conversion; None keeps the input's),
    which is also the output dtype. Training needs a token count M that is a multiple of 16: the weight
    gradient gᵀ·x contracts over M, and cuBLAS fp8 requires that.
    """

    def __init__(self, in_features: int, out_features: int, compute_dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features)
        self.compute_dtype = compute_dtype

    @classmethod
    def from_linear(cls, linear: Linear, compute_dtype: torch.dtype | None = None) -> "Float8Linear":
        with torch.device("meta"):  # no throw-away weight allocation: the Parameter is shared next
            module = cls(linear.in_features, linear.out_features, compute_dtype)
        module.weight = linear.weight
        return module

    def to_linear(self) -> Linear:
        with torch.device("meta"):
            module = Linear(self.in_features, self.out_features)
        module.weight = self.weight
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        x_2d = x.reshape(-1, x.size(-1))  # (M, K): _scaled_mm is 2-D only
        if torch.is_grad_enabled() and self.weight.requires_grad and x_2d.size(0) % FP8_DIM_MULTIPLE:
            raise ValueError(
                f"fp8 training needs the token count (batch x sequence) to be a multiple of {FP8_DIM_MULTIPLE},"
                f" got {x_2d.size(0)}; evaluate under disabled_fp8(model) or change the batch shape"
            )
        out = _Float8Matmul.apply(x_2d, self.weight)  # (M, N)
        return out.reshape(*x.shape[:-1], out.size(-1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8=tensorwise, compute_dtype={self.compute_dtype}"


@functools.lru_cache(maxsize=8)
def _scaled_mm_runs(device: str) -> bool:
    """Probe once per device: do e4m3·e4m3 and e5m2·e4m3 `_scaled_mm` both run here?"""
    try:
        one = torch.ones((), device=device)
        a = torch.zeros(16, 16, device=device)
        for first in (E4M3, E5M2):
            torch._scaled_mm(a.to(first), _col_major(a.to(E4M3)), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False


def check_fp8_support(device: torch.device | str) -> None:
    """Raise ValueError unless this torch build runs fp8 `_scaled_mm` on `device` (meta: shapes only)."""
    device = torch.device(device)
    if device.type == "meta":
        return
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not hasattr(torch, "_scaled_mm") or not _scaled_mm_runs(str(device)):
        raise ValueError(
            f"--fp8 needs a CUDA GPU with fp8 support (sm89+); torch {torch.__version__} cannot run fp8"
            f" _scaled_mm on {device}. Drop --fp8 or use an H100-class GPU."
        )


def is_fp8_eligible(linear: nn.Linear) -> bool:
    """nanochat's filter: both sides multiples of 16 and the smaller side at least 128."""
    dims = (linear.in_features, linear.out_features)
    return all(d % FP8_DIM_MULTIPLE == 0 for d in dims) and min(dims) >= MIN_FP8_FEATURES


def _children_of_type(model: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every child of `kind`, collected before any swap happens."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]


def convert_to_fp8(model: nn.Module, recipe: str = "tensorwise") -> int:
    """Swap every eligible `Linear` for a `Float8Linear` sharing its weight; return how many.

    Call after `init_weights` (the model's compute dtype is read now) and before torch.compile.
    Idempotent: already-converted modules are left alone and not counted.
    """
    if recipe not in RECIPES:
        raise ValueError(f"fp8 recipe {recipe!r} is not supported: only 'tensorwise' exists (as in nanochat)")
    param = next(model.parameters(), None)
    check_fp8_support(param.device if param is not None else "cpu")
    compute_dtype = getattr(model, "compute_dtype", None)
    n = 0
    for parent, name, child in _children_of_type(model, Linear):
        if not isinstance(child, Float8Linear) and is_fp8_eligible(child):
            setattr(parent, name, Float8Linear.from_linear(child, compute_dtype))
            n += 1
    return n


@contextmanager
def disabled_fp8(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every `Float8Linear` is a plain `Linear` on the same weight; restored on exit."""
    swapped = _children_of_type(model, Float8Linear)
    for parent, name, child in swapped:
        setattr(parent, name, child.to_linear())
    try:
        yield model
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
