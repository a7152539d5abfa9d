"""Training configuration: the flags of nanochat's base_train, and the plan everything derives from them.

`TrainConfig` holds every flag with base_train's default; `plan_training(config, world_size)` derives the rest
from `--depth` (fact sheet §2, ../shared/docs/nanochat-recipe.md):
model shape, parameter counts and FLOPs per token, the d12 reference point, the Power-Lines batch
size, the batch LR scale, the scaled weight decay, the horizon, gradient accumulation and the
optimizer groups. Floats are plain Python doubles computed in base_train's order, so they equal the
golden depth table bit for bit.

The CLI and the trainer share the flags: `add_arguments(parser)` generates one `--flag` per field,
`from_args(args)` reads them back. Show a plan with `speedrun config --depth 24 [--json]`.
"""

import argparse
import dataclasses
import functools
import math
import types
from dataclasses import asdict, dataclass, field, fields

import torch

from baseline.gpt import GPT, GPTConfig, has_value_embedding, padded_vocab_size, window_sizes
from baseline.optim import build_param_groups
from baseline.schedule import Schedule

REFERENCE_DEPTH = 12  # D_REF is the horizon of a d12 model at the same ratio (base_train's reference)
B_REF = 2**19  # reference total batch size in tokens, paired with D_REF
POWER_LINES_EXPONENT = 0.383  # optimal batch ∝ horizon^0.383 ("Power Lines", Bergsma et al. 2025)


def _flag(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """base_train's flags (scripts/base_train.py:41-79); the defaults reproduce its defaults."""

    # model shape: everything else derives from depth
    depth: int = _flag(20, "transformer layers; the one dial every other size derives from")
    aspect_ratio: int = _flag(64, "model_dim = depth × aspect_ratio, rounded up to a multiple of head_dim")
    head_dim: int = _flag(128, "channels per attention head (even, for rotary)")
    max_seq_len: int = _flag(2048, "tokens per training row (also the long attention window)")
    window_pattern: str = _flag("SSSL", "per-layer attention windows, tiled: S = short, L = long")
    vocab_size: int = _flag(32768, "tokenizer vocabulary (the trainer takes it from the tokenizer)")
    # horizon: --num-iterations > --target-flops > --target-param-data-ratio
    num_iterations: int = _flag(-1, "optimizer steps (-1: from --target-flops or the ratio)")
    target_flops: float = _flag(-1.0, "training FLOPs budget (-1: from the ratio)")
    target_param_data_ratio: float = _flag(12.0, "training tokens per scaling parameter")
    time_budget_s: float = _flag(-1.0, "stop at the first step boundary past this many timed seconds (-1: no budget)")
    # batch
    device_batch_size: int = _flag(32, "rows per micro-step per process")
    total_batch_size: int = _flag(-1, "tokens per optimizer step (-1: Power-Lines rule from the horizon)")
    # optimizer (base values at B_REF; the plan scales them by batch size)
    embedding_lr: float = _flag(0.3, "AdamW lr of wte (value embeds get half)")
    unembedding_lr: float = _flag(0.008, "AdamW lr of lm_head")
    weight_decay: float = _flag(0.28, "Muon weight decay at B_REF and D_REF")
    matrix_lr: float = _flag(0.02, "Muon lr of the block matrices")
    scalar_lr: float = _flag(0.5, "AdamW lr of x0_lambdas (resid_lambdas get 1%)")
    # schedule
    warmup_steps: int = _flag(40, "linear lr warmup steps")
    warmdown_ratio: float = _flag(0.65, "fraction of the steps with linear lr warmdown")
    final_lr_frac: float = _flag(0.05, "lr multiplier at the end of the warmdown")
    # evaluation, sampling, checkpoints
    eval_every: int = _flag(250, "val bpb every N steps (-1: only at the end)")
    eval_tokens: int = _flag(80 * 524288, "val tokens per bpb evaluation")
    save_every: int = _flag(-1, "checkpoint every N steps (-1: only at the end)")
    # runtime
    fp8: bool = _flag(False, "fp8 matmuls for the large Linears (CUDA only)")
    compile: bool | None = _flag(None, "torch.compile the model (default: on for CUDA, off for CPU)")
    seed: int = _flag(42, "global RNG seed")


@dataclass(frozen=True)
class TrainPlan:
    """Everything base_train derives from a TrainConfig and the world size (fact sheet §2)."""

    config: TrainConfig
    world_size: int
    # model (§2.1)
    model_config: GPTConfig
    model_dim: int
    n_head: int
    n_kv_head: int
    head_dim: int
    padded_vocab_size: int
    ve_layers: tuple[int, ...]
    window_sizes: tuple[int, ...]  # left window per layer; the right window is always 0
    params: dict[str, int]  # GPT.num_scaling_params()
    scaling_params: int  # N = transformer_matrices + lm_head (§2.2)
    num_matmul_params: int
    flops_per_token: int  # GPT.estimate_flops() (§8)
    # scaling rules (§2.3-2.7)
    target_tokens: int  # int(ratio · N), used by the batch and weight-decay rules whatever the horizon
    d_ref: float  # ratio · N(d12)
    b_ref: int
    total_batch_size: int
    total_batch_size_auto: bool
    lr_scale: float  # sqrt(B / B_REF), on the four lr flags
    dmodel_lr_scale: float  # (model_dim / 768)^-0.5, applied inside the optimizer groups (§2.8)
    embedding_lr_scaled: float
    unembedding_lr_scaled: float
    matrix_lr_scaled: float
    scalar_lr_scaled: float
    weight_decay_scaled: float
    # horizon
    horizon: str  # which flag set it: "num_iterations", "target_flops" or "target_param_data_ratio"
    num_iterations: int
    total_tokens: int
    total_flops: int
    warmdown_steps: int
    # batch split and evaluation
    tokens_per_micro_step: int  # per process
    grad_accum_steps: int
    eval_steps: int
    # optimizer groups as build_param_groups makes them, without the tensors
    param_groups: tuple[dict, ...]

    def optimizer_kwargs(self) -> dict[str, float]:
        """The scaled keyword arguments for `baseline.optim.build_param_groups`."""
        return dict(
            unembedding_lr=self.unembedding_lr_scaled,
            embedding_lr=self.embedding_lr_scaled,
            matrix_lr=self.matrix_lr_scaled,
            weight_decay=self.weight_decay_scaled,
            scalar_lr=self.scalar_lr_scaled,
        )

    def schedule(self) -> Schedule:
        c = self.config
        return Schedule(
            num_iterations=self.num_iterations,
            weight_decay=self.weight_decay_scaled,
            warmup_steps=c.warmup_steps,
            warmdown_ratio=c.warmdown_ratio,
            final_lr_frac=c.final_lr_frac,
            by_progress=c.time_budget_s > 0,
        )

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, the configs nested dicts."""
        return asdict(self)


def _model_config(config: TrainConfig, depth: int) -> GPTConfig:
    # base_train's build_model_meta: round model_dim up to whole heads; no GQA in the recipe.
    model_dim = math.ceil(depth * config.aspect_ratio / config.head_dim) * config.head_dim
    n_head = model_dim // config.head_dim
    return GPTConfig(
        sequence_len=config.max_seq_len,
        vocab_size=config.vocab_size,
        n_layer=depth,
        n_head=n_head,
        n_kv_head=n_head,
        n_embd=model_dim,
        window_pattern=config.window_pattern,
    )


@functools.lru_cache(maxsize=64)
def _meta_model(model_config_items: tuple) -> GPT:
    """A GPT on the meta device (no memory, no init), cached: plans only count and group parameters."""
    with torch.device("meta"):
        return GPT(GPTConfig(*model_config_items))


def _scaling_params(model: GPT) -> int:
    counts = model.num_scaling_params()
    return counts["transformer_matrices"] + counts["lm_head"]


def _group_summary(group: dict, names: dict[int, str]) -> dict:
    """One optimizer group as data: hyper-parameters, first parameter's name and shape, sizes."""
    params = group["params"]
    hyper = ("betas", "eps") if group["kind"] == "adamw" else ("momentum", "beta2", "ns_steps")
    return dict(
        kind=group["kind"],
        first_param=names[id(params[0])],
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        n_params=len(params),
        shape=tuple(params[0].shape),
        numel=sum(p.numel() for p in params),
        **{k: group[k] for k in hyper},
    )


def _check(config: TrainConfig, world_size: int) -> None:
    c = config
    if c.depth < 1:
        raise ValueError(
            f"--depth {c.depth} is invalid: the model needs at least 1 layer, use --depth 1 or more"
        )
    if c.head_dim < 2 or c.head_dim % 2:
        raise ValueError(f"--head-dim {c.head_dim} must be even and positive (rotary splits heads in half)")
    if c.aspect_ratio < 1:
        raise ValueError(f"--aspect-ratio {c.aspect_ratio} must be positive (model_dim = depth × aspect)")
    if not c.window_pattern or set(c.window_pattern) - set("SL"):
        raise ValueError(
            f"--window-pattern {c.window_pattern!r} may only contain S (short) and L (long), e.g. SSSL or L"
        )
    for name in ("max_seq_len", "device_batch_size", "vocab_size"):
        if getattr(c, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(c, name)} must be positive")
    if world_size < 1:
        raise ValueError(f"world_size {world_size} must be positive")
    if c.target_param_data_ratio <= 0:
        raise ValueError(
            f"--target-param-data-ratio {c.target_param_data_ratio} must be positive: the batch-size and"
            " weight-decay rules use it even when --num-iterations or --target-flops sets the horizon"
        )
    if c.total_batch_size == 0 or c.total_batch_size < -1:
        raise ValueError(f"--total-batch-size {c.total_batch_size} must be positive, or -1 for the auto rule")


def _batch_split_error(total: int, config: TrainConfig, world_size: int) -> ValueError:
    """Name the nearest device batch (≤ the asked one) and total batch (≥ it) that do divide."""
    row_tokens = config.max_seq_len * world_size
    per_step = config.device_batch_size * row_tokens
    fix = f"--total-batch-size {math.ceil(total / per_step) * per_step}"
    if total % row_tokens == 0:
        rows = total // row_tokens
        device_batch = max(b for b in range(1, min(config.device_batch_size, rows) + 1) if rows % b == 0)
        fix = f"--device-batch-size {device_batch} or {fix}"
    return ValueError(
        f"total batch {total:,} tokens is not a multiple of device_batch_size {config.device_batch_size} × "
        f"max_seq_len {config.max_seq_len} × world_size {world_size} = {per_step:,} tokens; use {fix}"
    )


def plan_training(config: TrainConfig, world_size: int = 1) -> TrainPlan:
    """Derive everything from the flags, as scripts/base_train.py does; ValueError on a bad combination."""
    _check(config, world_size)
    c = config
    model_config = _model_config(c, c.depth)
    model = _meta_model(dataclasses.astuple(model_config))
    reference = _meta_model(dataclasses.astuple(_model_config(c, REFERENCE_DEPTH)))

    # Scaling rules, in base_train's evaluation order (base_train.py:263-302).
    scaling_params = _scaling_params(model)
    target_tokens = int(c.target_param_data_ratio * scaling_params)
    d_ref = c.target_param_data_ratio * _scaling_params(reference)
    total_batch_size = c.total_batch_size
    if total_batch_size == -1:
        predicted = B_REF * (target_tokens / d_ref) ** POWER_LINES_EXPONENT
        total_batch_size = 2 ** round(math.log2(predicted))
    lr_scale = math.sqrt(total_batch_size / B_REF)
    weight_decay_scaled = c.weight_decay * math.sqrt(total_batch_size / B_REF) * (d_ref / target_tokens)

    # Horizon: --num-iterations > --target-flops > ratio (base_train.py:339-353).
    flops_per_token = model.estimate_flops()
    if c.num_iterations > 0:
        horizon, num_iterations = "num_iterations", c.num_iterations
    elif c.target_flops > 0:
        horizon = "target_flops"
        num_iterations = round(c.target_flops / (flops_per_token * total_batch_size))
    else:
        horizon, num_iterations = "target_param_data_ratio", target_tokens // total_batch_size
    if num_iterations < 1:
        raise ValueError(
            f"the horizon set by --{horizon.replace('_', '-')} is {num_iterations} steps of "
            f"{total_batch_size:,} tokens; raise it or pass --num-iterations"
        )

    # Gradient accumulation must split the total batch exactly (base_train.py:407-413).
    tokens_per_micro_step = c.device_batch_size * c.max_seq_len
    if total_batch_size % (tokens_per_micro_step * world_size):
        raise _batch_split_error(total_batch_size, c, world_size)

    dmodel_lr_scale = (model_config.n_embd / 768) ** -0.5
    embedding_lr = c.embedding_lr * lr_scale
    unembedding_lr = c.unembedding_lr * lr_scale
    matrix_lr = c.matrix_lr * lr_scale
    scalar_lr = c.scalar_lr * lr_scale
    groups = build_param_groups(
        model,
        unembedding_lr=unembedding_lr,
        embedding_lr=embedding_lr,
        matrix_lr=matrix_lr,
        weight_decay=weight_decay_scaled,
        scalar_lr=scalar_lr,
    )
    names = {id(p): name for name, p in model.named_parameters()}
    result = TrainPlan(
        config=c,
        world_size=world_size,
        model_config=model_config,
        model_dim=model_config.n_embd,
        n_head=model_config.n_head,
        n_kv_head=model_config.n_kv_head,
        head_dim=model_config.n_embd // model_config.n_head,
        padded_vocab_size=padded_vocab_size(c.vocab_size),
        ve_layers=tuple(i for i in range(c.depth) if has_value_embedding(i, c.depth)),
        window_sizes=tuple(window_sizes(model_config)),
        params=model.num_scaling_params(),
        scaling_params=scaling_params,
        num_matmul_params=model.num_matmul_params(),
        flops_per_token=flops_per_token,
        target_tokens=target_tokens,
        d_ref=d_ref,
        b_ref=B_REF,
        total_batch_size=total_batch_size,
        total_batch_size_auto=c.total_batch_size == -1,
        lr_scale=lr_scale,
        dmodel_lr_scale=dmodel_lr_scale,
        embedding_lr_scaled=embedding_lr,
        unembedding_lr_scaled=unembedding_lr,
        matrix_lr_scaled=matrix_lr,
        scalar_lr_scaled=scalar_lr,
        weight_decay_scaled=weight_decay_scaled,
        horizon=horizon,
        num_iterations=num_iterations,
        total_tokens=total_batch_size * num_iterations,
        total_flops=flops_per_token * total_batch_size * num_iterations,
        warmdown_steps=round(c.warmdown_ratio * num_iterations),
        tokens_per_micro_step=tokens_per_micro_step,
        grad_accum_steps=total_batch_size // (tokens_per_micro_step * world_size),
        eval_steps=c.eval_tokens // (tokens_per_micro_step * world_size),
        param_groups=tuple(_group_summary(g, names) for g in groups),
    )
    assert result.warmdown_steps == result.schedule().warmdown_iters
    return result


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per TrainConfig field (underscores → dashes), typed, with the field's help."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help = f"{f.metadata['help']} (default: {f.default})"
        if f.type is bool or f.type == bool | None:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help)
            continue
        kind = f.type
        if isinstance(kind, types.UnionType):  # `X | None`: parse as X, None only as the default
            kind = next(t for t in kind.__args__ if t is not type(None))
        parser.add_argument(flag, type=kind, default=f.default, metavar=kind.__name__.upper(), help=help)


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags; other attributes of `args` (e.g. --json) are ignored."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def describe(p: TrainPlan) -> str:
    """The plan as an aligned, human-readable table (`speedrun config`)."""
    c = p.config
    short, long = min(p.window_sizes), max(p.window_sizes)
    sections = {
        f"model  d{c.depth}": [
            ("model_dim", p.model_dim),
            ("heads × head_dim", f"{p.n_head} × {p.head_dim} (kv heads {p.n_kv_head})"),
            ("vocab (padded)", f"{c.vocab_size:,} ({p.padded_vocab_size:,})"),
            ("sequence length", c.max_seq_len),
            ("windows", f"{c.window_pattern} tiled, last layer L: S = {short}, L = {long}"),
            ("value-embed layers", " ".join(map(str, p.ve_layers))),
            *[(f"params {k}", v) for k, v in p.params.items()],
            ("scaling params N", p.scaling_params),
            ("matmul params", p.num_matmul_params),
            ("FLOPs per token", p.flops_per_token),
        ],
        "horizon": [
            ("set by", f"--{p.horizon.replace('_', '-')}"),
            ("param:data ratio", c.target_param_data_ratio),
            ("target tokens", p.target_tokens),
            ("D_REF (d12) / B_REF", f"{p.d_ref:,.0f} / {p.b_ref:,}"),
            (
                "total batch",
                f"{p.total_batch_size:,} tokens ({'auto' if p.total_batch_size_auto else 'given'})",
            ),
            ("steps", p.num_iterations),
            ("warmup / warmdown", f"{c.warmup_steps} / {p.warmdown_steps} steps"),
            ("total tokens", p.total_tokens),
            ("total FLOPs", f"{p.total_flops:.4g}"),
        ],
        f"batch split  world_size {p.world_size}": [
            ("device batch", f"{c.device_batch_size} rows = {p.tokens_per_micro_step:,} tokens"),
            ("grad accum steps", p.grad_accum_steps),
            ("eval steps", f"{p.eval_steps} ({c.eval_tokens:,} tokens)"),
        ],
        "optimizer": [
            ("lr scale sqrt(B/B_REF)", p.lr_scale),
            ("d_model lr scale", p.dmodel_lr_scale),
            (
                "embedding / unembedding lr",
                f"{_fmt(p.embedding_lr_scaled)} / {_fmt(p.unembedding_lr_scaled)}",
            ),
            ("matrix / scalar lr", f"{_fmt(p.matrix_lr_scaled)} / {_fmt(p.scalar_lr_scaled)}"),
            ("Muon weight decay", p.weight_decay_scaled),
        ],
    }
    width = max(len(k) for rows in sections.values() for k, _ in rows)
    lines = []
    for title, rows in sections.items():
        lines += [title] + [f"  {k:<{width}}  {_fmt(v)}" for k, v in rows]
    header = ("kind", "first param", "n", "shape", "lr", "wd", "betas / momentum")
    table = [header] + [
        (
            g["kind"],
            g["first_param"],
            str(g["n_params"]),
            "×".join(map(str, g["shape"])),
            _fmt(g["lr"]),
            _fmt(g["weight_decay"]),
            str(g["betas"]) if g["kind"] == "adamw" else f"{g['momentum']} (scheduled)",
        )
        for g in p.param_groups
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.6g}"
