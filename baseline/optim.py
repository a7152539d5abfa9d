"""MuonAdamW, nanochat's optimizer: AdamW for embeddings, head and scalars; Muon for block matrices.

Fact sheet §3 (../shared/docs/nanochat-recipe.md). `build_param_groups(model, ...)` makes the groups
nanochat's `setup_optimizer` makes; `MuonAdamW(groups)` steps them. Per step:
- AdamW (§3.2): decoupled decay first, bias-corrected moments, eps outside the sqrt, math in fp32.
- Muon (§3.3), one group per matrix shape, K matrices stacked (K, m, n): Nesterov momentum,
  MuonEq row equilibration, Polar Express orthogonalisation (replaceable: `orthogonalize=`),
  Muon+ renormalisation, NorMuon second moment, cautious weight decay, lr·sqrt(max(1, m/n)).
- Distributed (§3.4): no DDP. Each rank backprops its own micro-batches and `step()` averages the
  gradients: small AdamW tensors are all-reduced, large ones reduce-scattered along dim 0 (ZeRO-2
  style sharded state), Muon stacks are reduce-scattered by whole matrices; updated shards are
  all-gathered. One process is the 1-rank case of the same code, with no communication.
Hyper-parameters reach the kernels as fp32 0-d tensors, so compiled kernels never recompile for
a new lr or momentum and the arithmetic is fp32 like nanochat's.
"""

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

# Polar Express (Amsel et al. 2025): per-iteration (a, b, c) of the odd polynomial
# a·x + b·x³ + c·x⁵ that drives every singular value towards 1 as fast as possible.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
SHARD_MIN_NUMEL = 1024  # smaller AdamW tensors are all-reduced and updated whole on every rank


def polar_express(X: Tensor, ns_steps: int) -> Tensor:
    """Approximate orthogonal polar factor U·Vᵀ of each matrix of X (K, m, n), in X's dtype.

    The input is scaled so its spectral norm is below 1 (the coefficients assume it, with a 1%
    safety margin), then each iteration applies X ← a·X + b·(XXᵀ)X + c·(XXᵀ)²X, associated so that
    the Gram matrix is the smaller of XXᵀ (m, m) and XᵀX (n, n).
    """
    if ns_steps > len(POLAR_EXPRESS_COEFFS):
        raise ValueError(f"ns_steps={ns_steps} but Polar Express has {len(POLAR_EXPRESS_COEFFS)} iterations")
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.01 + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:ns_steps]:
        if tall:
            A = X.mT @ X  # (K, n, n)
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT  # (K, m, m)
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def equilibrate_rows(X: Tensor) -> Tensor:
    """MuonEq: rescale each row of X (K, m, n) to the same L2 norm ‖X‖_F/sqrt(m); norms in fp32."""
    X32 = X.float()
    row_norms = X32.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (K, m, 1); zero rows stay zero
    target = X32.norm(dim=(-2, -1), keepdim=True) / math.sqrt(X.size(-2))  # (K, 1, 1)
    return X * (target / row_norms).to(X.dtype)


def adamw_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: Tensor,
    beta2: Tensor,
    eps: Tensor,
    weight_decay: Tensor,
) -> None:
    """One AdamW step on a tensor (or this rank's shard of it), in place; the math runs in fp32."""
    p = param.float() * (1 - lr * weight_decay)  # decoupled decay, before the update
    g = grad.float()
    m = exp_avg.float().lerp(g, 1 - beta1)
    v = exp_avg_sq.float().lerp(g.square(), 1 - beta2)
    denom = (v / (1 - beta2**step)).sqrt() + eps
    p = p - lr / (1 - beta1**step) * (m / denom)
    param.copy_(p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)


def muon_step(
    grads: Tensor,
    params: Tensor,
    momentum_buffer: Tensor,
    second_momentum_buffer: Tensor,
    momentum: Tensor,
    lr: Tensor,
    weight_decay: Tensor,
    beta2: Tensor,
    *,
    ns_steps: int,
    ortho_dtype: torch.dtype | None,
    orthogonalize: Callable[[Tensor, int], Tensor],
) -> None:
    """One Muon step on K stacked same-shape matrices, in place (grads is used as scratch).

    grads, params, momentum_buffer: (K, m, n); second_momentum_buffer: (K, m, 1) if m >= n else
    (K, 1, n). `lr` already includes the shape factor sqrt(max(1, m/n)).
    """
    m, n = params.shape[-2:]
    # Nesterov momentum: buf ← μ·buf + (1−μ)·g, then the update looks ahead, u = (1−μ)·g + μ·buf.
    mu = momentum.to(grads.dtype)
    momentum_buffer.lerp_(grads, 1 - mu)
    update = grads.lerp_(momentum_buffer, mu)
    X = update if ortho_dtype is None else update.to(ortho_dtype)
    X = orthogonalize(equilibrate_rows(X), ns_steps).to(params.dtype)
    # Muon+: fix the Frobenius norm at sqrt(min(m, n)), that of an exactly orthogonal matrix.
    fro = X.float().norm(dim=(-2, -1), keepdim=True)  # (K, 1, 1)
    X = X * (math.sqrt(min(m, n)) / fro.clamp_min(1e-10)).to(X.dtype)
    # NorMuon (Li et al. 2025): an Adam-like second moment per row (tall/square) or per column
    # (wide), no bias correction; it reshapes the update, then the Frobenius norm is restored.
    reduce_dim = -1 if m >= n else -2
    v = X.float().square().mean(dim=reduce_dim, keepdim=True)  # (K, m, 1) or (K, 1, n)
    second_momentum_buffer.lerp_(v.to(second_momentum_buffer.dtype), 1 - beta2.to(second_momentum_buffer.dtype))
    scaled = X * second_momentum_buffer.clamp_min(1e-10).rsqrt().to(X.dtype)
    fro = X.float().norm(dim=(-2, -1), keepdim=True)  # (K, 1, 1)
    fro_scaled = scaled.float().norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10)
    X = scaled * (fro / fro_scaled).to(X.dtype)
    # Cautious weight decay: decay only where update and weight agree in sign, i.e. where the step
    # already shrinks |p| ("cautious" decay, as in nanochat).
    lr, weight_decay = lr.to(params.dtype), weight_decay.to(params.dtype)
    mask = (X * params) >= 0
    params.sub_(lr * X + lr * weight_decay * params * mask)


def _hyperparameter() -> Tensor:
    return torch.zeros((), dtype=torch.float32)


def _wait(work) -> None:
    if work is not None:
        work.wait()


class MuonAdamW(torch.optim.Optimizer):
    """AdamW and Muon groups in one optimizer, with nanochat's group dicts (`kind` 'adamw'|'muon').

    compute_dtype: the model's activation dtype; Muon orthogonalises in bf16 only when it is bf16.
    orthogonalize: `(X (K, m, n), ns_steps) -> X` approximate polar factor; default `polar_express`.
    compile: torch.compile the step kernels; default on for CUDA parameters, off on CPU.
    """

    ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")
    MUON_KEYS = ("lr", "momentum", "ns_steps", "beta2", "weight_decay")

    def __init__(
        self,
        param_groups: list[dict],
        *,
        compute_dtype: torch.dtype = torch.float32,
        orthogonalize: Callable[[Tensor, int], Tensor] = polar_express,
        compile: bool | None = None,
    ):
        for i, group in enumerate(param_groups):
            kind = group.get("kind")
            if kind not in ("adamw", "muon"):
                raise ValueError(f"param group {i}: kind must be 'adamw' or 'muon', got {kind!r}")
            missing = [k for k in (self.ADAMW_KEYS if kind == "adamw" else self.MUON_KEYS) if k not in group]
            if missing:
                raise ValueError(f"param group {i} ({kind}) lacks {missing}")
            if kind == "muon":
                shapes = {tuple(p.shape) for p in group["params"]}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise ValueError(f"param group {i} (muon) needs 2-D params of one shape, got {shapes}")
        super().__init__(param_groups, defaults={})
        self.orthogonalize = orthogonalize
        self.ortho_dtype = torch.bfloat16 if compute_dtype == torch.bfloat16 else None
        if compile is None:
            compile = any(p.is_cuda for group in self.param_groups for p in group["params"])
        kernel = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if compile else (lambda f: f)
        self._adamw_step, self._muon_step = kernel(adamw_step), kernel(muon_step)
        # Filled in place before every kernel call; fp32 CPU 0-d tensors as in nanochat.
        self._adamw_hp = {k: _hyperparameter() for k in ("step", "lr", "beta1", "beta2", "eps", "wd")}
        self._muon_hp = {k: _hyperparameter() for k in ("momentum", "lr", "wd", "beta2")}

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        # Three phases so communication overlaps compute: launch every gradient reduction; then
        # per group wait, update this rank's shard, launch its gathers; then wait and write back.
        reduced = [
            (self._reduce_adamw if g["kind"] == "adamw" else self._reduce_muon)(g, rank, world)
            for g in self.param_groups
        ]
        finishers = [
            (self._update_adamw if g["kind"] == "adamw" else self._update_muon)(g, r, rank, world)
            for g, r in zip(self.param_groups, reduced, strict=True)
        ]
        for finish in finishers:
            finish()

    # ------------------------------------------------------------------ AdamW

    def _reduce_adamw(self, group: dict, rank: int, world: int) -> list:
        """Launch the averaging of each gradient; returns (param, param shard, grad shard, work)."""
        items = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if world == 1:
                items.append((p, p, p.grad, None))
            elif p.numel() < SHARD_MIN_NUMEL:
                work = dist.all_reduce(p.grad, op=dist.ReduceOp.AVG, async_op=True)
                items.append((p, p, p.grad, work))
            else:
                if p.shape[0] % world:
                    raise ValueError(
                        f"AdamW shards params of >= {SHARD_MIN_NUMEL} elements along dim 0, but shape "
                        f"{tuple(p.shape)} has {p.shape[0]} rows, not divisible by world size {world}"
                    )
                rows = p.shape[0] // world
                grad_shard = torch.empty_like(p.grad[:rows])
                work = dist.reduce_scatter_single(grad_shard, p.grad, op=dist.ReduceOp.AVG, async_op=True)
                items.append((p, p[rank * rows : (rank + 1) * rows], grad_shard, work))
        return items

    def _update_adamw(self, group: dict, items: list, rank: int, world: int) -> Callable[[], None]:
        hp = self._adamw_hp
        hp["lr"].fill_(group["lr"])
        hp["beta1"].fill_(group["betas"][0])
        hp["beta2"].fill_(group["betas"][1])
        hp["eps"].fill_(group["eps"])
        hp["wd"].fill_(group["weight_decay"])
        gathers = []
        for p, p_shard, grad_shard, work in items:
            _wait(work)
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p_shard)
                state["exp_avg_sq"] = torch.zeros_like(p_shard)
            state["step"] += 1
            hp["step"].fill_(state["step"])
            self._adamw_step(
                p_shard, grad_shard, state["exp_avg"], state["exp_avg_sq"],
                hp["step"], hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["wd"],
            )  # fmt: skip
            if p_shard is not p:
                gathers.append(dist.all_gather_single(p, p_shard, async_op=True))
        return lambda: [work.wait() for work in gathers]

    # ------------------------------------------------------------------ Muon

    def _reduce_muon(self, group: dict, rank: int, world: int):
        """Stack the K gradients, zero-padded to a multiple of the world size, and launch their
        averaging so that each rank receives ceil(K/world) whole matrices.
        Returns (stacked grads (chunk·world, m, n), this rank's grads (chunk, m, n), work)."""
        params = group["params"]
        if all(p.grad is None for p in params):
            return None
        if any(p.grad is None for p in params):
            raise ValueError("a Muon group has gradients for some but not all of its params")
        chunk = math.ceil(len(params) / world)
        padding = [torch.zeros_like(params[0])] * (chunk * world - len(params))
        stacked = torch.stack([p.grad for p in params] + padding)  # (chunk·world, m, n)
        if world == 1:
            return stacked, stacked, None
        grad_shard = torch.empty_like(stacked[:chunk])
        work = dist.reduce_scatter_single(grad_shard, stacked, op=dist.ReduceOp.AVG, async_op=True)
        return stacked, grad_shard, work

    def _update_muon(self, group: dict, reduced, rank: int, world: int) -> Callable[[], None]:
        if reduced is None:
            return lambda: None
        stacked, grad_shard, work = reduced
        params = group["params"]
        chunk, m, n = grad_shard.shape
        owned = params[rank * chunk : (rank + 1) * chunk]
        padding = [torch.zeros_like(params[0])] * (chunk - len(owned))
        param_shard = torch.stack(owned + padding)  # (chunk, m, n); padding stays zero
        state = self.state[params[0]]  # one state per group, keyed by its first param
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param_shard)
            v_shape = (chunk, m, 1) if m >= n else (chunk, 1, n)
            state["second_momentum_buffer"] = param_shard.new_zeros(v_shape)
        hp = self._muon_hp
        hp["momentum"].fill_(group["momentum"])
        hp["lr"].fill_(group["lr"] * max(1.0, m / n) ** 0.5)  # tall matrices take larger steps
        hp["wd"].fill_(group["weight_decay"])
        hp["beta2"].fill_(group["beta2"])
        _wait(work)
        self._muon_step(
            grad_shard, param_shard, state["momentum_buffer"], state["second_momentum_buffer"],
            hp["momentum"], hp["lr"], hp["wd"], hp["beta2"],
            ns_steps=group["ns_steps"], ortho_dtype=self.ortho_dtype, orthogonalize=self.orthogonalize,
        )  # fmt: skip
        if world == 1:
            gathered, gather = param_shard, None
        else:  # the stacked-gradient buffer is free again: gather the updated matrices into it
            gathered = stacked
            gather = dist.all_gather_single(gathered, param_shard, async_op=True)

        def finish() -> None:
            _wait(gather)
            for p, new in zip(params, gathered, strict=False):  # gathered may end in padding
                p.copy_(new)

        return finish


def build_param_groups(
    model,
    *,
    unembedding_lr: float,
    embedding_lr: float,
    matrix_lr: float,
    weight_decay: float,
    scalar_lr: float,
) -> list[dict]:
    """nanochat's optimizer groups for a `baseline.gpt.GPT` (fact sheet §3.1), `initial_lr` set.

    Order: lm_head, wte, value embeds, resid, x0, the smear group (fixed lr 0.2), then one Muon
    group per distinct shape (sorted) of the matrices under `transformer.h`, in module order.
    The AdamW lrs of lm_head, wte and value embeds scale with (n_embd/768)^-0.5.
    """
    dmodel_lr_scale = (model.config.n_embd / 768) ** -0.5

    def adamw(params, lr, betas, weight_decay):
        return dict(kind="adamw", params=list(params), lr=lr, betas=betas, eps=1e-10, weight_decay=weight_decay)

    groups = [
        adamw([model.lm_head.weight], unembedding_lr * dmodel_lr_scale, (0.8, 0.96), 0.01),
        adamw([model.transformer.wte.weight], embedding_lr * dmodel_lr_scale, (0.8, 0.995), 0.001),
        adamw(model.value_embeds.parameters(), embedding_lr * dmodel_lr_scale * 0.5, (0.8, 0.995), 0.01),
        adamw([model.resid_lambdas], scalar_lr * 0.01, (0.8, 0.95), 0.05),
        adamw([model.x0_lambdas], scalar_lr, (0.96, 0.95), 0.0),
        adamw([model.smear_gate.weight, model.smear_lambda, model.backout_lambda], 0.2, (0.8, 0.95), 0.0),
    ]
    matrices = list(model.transformer.h.parameters())
    for shape in sorted({p.shape for p in matrices}):
        groups.append(
            dict(
                kind="muon",
                params=[p for p in matrices if p.shape == shape],
                lr=matrix_lr,
                momentum=0.95,
                ns_steps=5,
                beta2=0.9,
                weight_decay=weight_decay,
            )
        )
    for group in groups:
        group["initial_lr"] = group["lr"]
    _check_coverage(model, groups)
    return groups


def _check_coverage(model, groups: list[dict]) -> None:
    """Every trainable parameter must be in exactly one group, or it would silently never train."""
    names = {id(p): name for name, p in model.named_parameters()}
    seen = set()
    for group in groups:
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError(f"parameter {names.get(id(p), '?')} is in more than one optimizer group")
            seen.add(id(p))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"parameters in no optimizer group: {missing}; add them to build_param_groups")
