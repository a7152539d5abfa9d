"""The submission contract: what a submission is, what it may change, what it may not, and how that is checked.

Read this file top to bottom before writing one; `speedrun new NAME` (`submissions/scaffold.py`) writes a
folder to start from. Everything a rule says is code below, and `tests/test_submissions.py` (the open
division: `tests/test_open_division.py`) proves each refusal.

A submission is `submissions/<name>/submission.py` plus `README.md` (claim, method, results, command),
or any folder holding a `submission.py`, or a single `.py` file, given by path. `submission.py` is a
plain module. METADATA is required; every other name is optional, and what it leaves out is the
baseline's:

    METADATA = {"authors": ["Ada"], "description": "one line: what changes and why it should be faster"}
    CONFIG = {"matrix_lr": 0.03}                   # TrainConfig overrides, fields of ALLOWED_OVERRIDES only
    def build_optimizer(model, plan, compute_dtype) -> torch.optim.Optimizer: ...   # BuildOptimizer
    def build_schedule(plan) -> Schedule: ...      # BuildSchedule: lr / Muon momentum / Muon wd per (step, progress)
    KERNELS = {"rms_norm": my_rms_norm}            # equivalent replacements, names from KERNEL_SPECS
    def build_model(plan, device, compute_dtype) -> torch.nn.Module: ...  # BuildModel: the open division only

The frozen trainer (`baseline/train.py`) owns the loop, the data stream, the clock and the eval; a
submission only hands it hooks (`baseline.hooks.Hooks`). Two divisions, as in MLPerf: a submission is in
the OPEN division when it defines `build_model`, else in the CLOSED one. The hook is the marker because
it is exactly what changes how a result can be checked: a closed checkpoint is a baseline model that the
frozen eval and the server load without any submission code; an open one is only weights for the
submission's own code, which the eval must run (eval/open_model.py, in the server's sandbox).

| what may change                                        | closed             | open                   |
|--------------------------------------------------------|--------------------|------------------------|
| optimizer, schedule, batch, horizon, depth, fp8        | the submission     | the submission         |
| kernels (KERNELS)                                      | equivalent ones    | orthogonalize only     |
| the model's code (build_model)                         | no: the baseline's | the submission         |
| architecture dials: aspect_ratio, head_dim, window_pattern | no: the track's | the submission        |
| data stream, row length, tokenizer, eval, timer, seeds | no: the track's    | no: the track's        |
| who runs the model for the metric                      | frozen code only   | its code, in a sandbox |

Why these lines (what keeps two results comparable): a result is the timed seconds to reach the track's
target metric. Anything that changes the metric's definition is the track's in both divisions: the data
stream and row length (max_seq_len), the tokenizer (vocab_size), the eval (eval_tokens, eval_every) and
the seeds. What only changes how training gets there is the submission's: the size dial (depth), the
horizon, the batch, the optimizer and its lrs, the schedule, fp8 (the eval runs with fp8 off) and
compilation. The architecture is the track's in the closed division (results compare the recipes of
one model) and the submission's in the open one (results compare models; nanochat's leaderboard runs
5 and 6 and most modded-nanogpt records were architecture changes). Results of the two divisions are
ranked apart.

The open division's model (BuildModel, `build_model(plan, device, compute_dtype)`): an initialised
torch.nn.Module on `device`, built only from `plan` (`plan.model_config` has the track's vocab_size and
sequence_len and the shape dials; `compute_dtype` is the activation dtype, bf16 on GPUs), with the
baseline's calling convention: `model(idx)` -> fp32 logits (B, T, vocab_size), `model(idx, targets)` ->
the mean loss (targets -1 ignored), `model(idx, targets, loss_reduction="none")` -> per-token losses
(B, T), for any T up to sequence_len (chat generates token by token with `model(idx)`), each position
seeing only the tokens up to it in its own row. The eval scores the cross-entropy of `model(idx)`'s
logits with frozen code, so what the model reports as its loss never reaches the metric (the trainer
minimises it). Without build_optimizer an open model trains with
`submissions.param_groups.open_optimizer` (Muon for every matrix, AdamW for the rest, the baseline's
groups where the names are the baseline's). The plan's FLOPs and parameter counts (MFU, the ratio
horizon) are the baseline model's at those dials.

Enforced here (refused before training, with one line that names the problem and the fix):
- `load_submission` (cheap, in every process): it imports; METADATA has its keys; CONFIG sets only
  allowed TrainConfig fields (the architecture dials only in the open division) with values of the
  field's type; the hooks are callables (build_model takes (plan, device, compute_dtype)); KERNELS names
  only known operations, and only orthogonalize in the open division; no name is a near-miss of a hook
  (`build_optimiser` would silently be ignored).
- `check_submission` (`submissions/conformance.py`, a tiny model on CPU, about a second plus any compiling):
  every kernel computes its baseline operation, outputs and input gradients, within KERNEL_SPECS'
  tolerance; the schedule gives finite numbers at every step; the optimizer holds every trainable
  parameter exactly once and one step trains. An open model also (`submissions/open_conformance.py`):
  gives logits and losses of the right shapes and dtype, finite; scores the same in two copies and in
  reverse batch order, its state untouched by the eval; its losses are those of its logits; it is
  causal, row by row, at any length; it trains a few steps with every parameter moving; it loads its
  own safetensors checkpoint into a fresh build with the same outputs. The runner calls it once, before
  the first seed.
- `check_eval_budget(config, world_size)`: the resolved config scores exactly the track's val tokens.
Enforced by the harness while the submission runs (harness/guard.py, harness/runner.py; the run ends
`invalid` with one line; tests/test_trust.py tries each):
- every training step is timed, from step 0 (protocol/timing.py); compile warm-up happens in a separate
  throwaway process that reads no data; the runner, which never imports a submission, stamps every
  step event with its own clock, and the run is invalid when the two clocks disagree;
- the submission's code may not patch `time`, `torch.cuda.synchronize`, `torch.set_num_threads` or any
  attribute of the frozen packages (protocol, baseline, eval, harness): compared after the import and
  after every step;
- no thread or process it started may be alive at a step boundary, and the thread count is the track's;
- the training process never sees the val or held-out data or the eval bundle (not in its data view;
  reading them is refused), and writes only into its run directory;
- the final metric is computed in a fresh process that never imports the submission, on a checkpoint
  the runner pinned by its hash at the last step boundary; in the open division by harness/open_eval.py,
  which runs the model code copied into the run directory at registration (its hash pinned too), scores
  the val batches in order and again in reverse (a model that learns or changes during the eval is
  invalid), checks causality on the val data, and may write only its result, read no training data,
  open no socket and start no process (tests/test_open_division.py tries each).
Enforced by the harness and the server: the data, tokenizer, eval bundle and code are hashed into
every record; the leaderboard re-runs submissions in a sandbox and compares (the decisive check).
Not enforceable in-process, so rules for reviewers (and why):
- a kernel must not behave differently on shapes, dtypes or devices the checks do not try (they run in
  fp32 on CPU; a GPU path must compute the same function);
- no work may hide from the checks by a route Python's audit hooks and attribute snapshots cannot see:
  native code that opens files or starts threads itself, code compiled under a frozen module's file
  name, a patch that restores itself before the step boundary (the runner's clock still sees its
  effect on time; a re-run in the server's sandbox sees any effect on the result);
- no state may be carried from one run to another outside the run directory (a machine's other files
  are not walled off locally; the server's re-run starts from nothing);
- open division: the model code runs in the eval process, so nothing there is out of its reach, the
  result it writes included: the eval's checks catch a model that learns, peeks or varies by accident
  or design of its architecture, not one written to forge its score. Its source is hashed into the
  record for review, and the server re-runs it in its sandbox.
"""

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import torch

from baseline import kernels as base
from baseline.attention import attention
from baseline.checkpoint import build_model as build_gpt
from baseline.config import TrainConfig, TrainPlan
from baseline.hooks import Hooks, baseline_optimizer, baseline_schedule, import_plugin
from baseline.optim import MuonAdamW, build_param_groups, polar_express
from submissions.param_groups import open_optimizer

REPO = Path(__file__).resolve().parents[1]
SUBMISSIONS_DIR = REPO / "submissions"
MODULE_FILE = "submission.py"


class SubmissionError(ValueError):
    """A submission broke the contract; the message is one line: the problem, then the fix."""


# ---------------------------------------------------------------------------------------- metadata

# Required keys and their types; `references` (papers, repos) is optional. Unknown keys are refused.
METADATA_REQUIRED = {"authors": list, "description": str}
METADATA_OPTIONAL = {"references": list}


# ---------------------------------------------------------------------------------------- config
# Every TrainConfig field is in exactly one of the two tables (a test keeps it so): a new flag needs a
# decision here before a submission can set it.

ALLOWED_OVERRIDES = {
    # model size: the one dial; every other size derives from it, so the model stays nanochat's family
    "depth": "size",
    # horizon (precedence: num_iterations > target_flops > target_param_data_ratio; a track may pin one)
    "num_iterations": "horizon",
    "target_flops": "horizon",
    "target_param_data_ratio": "horizon",
    # batch (device_batch_size also sets the eval's rows per step: see check_eval_budget)
    "device_batch_size": "batch",
    "total_batch_size": "batch",
    # optimizer: base values at B_REF, scaled by the plan
    "embedding_lr": "optimizer",
    "unembedding_lr": "optimizer",
    "weight_decay": "optimizer",
    "matrix_lr": "optimizer",
    "scalar_lr": "optimizer",
    # schedule
    "warmup_steps": "schedule",
    "warmdown_ratio": "schedule",
    "final_lr_frac": "schedule",
    # runtime: how the same function is computed
    "fp8": "runtime",
    "compile": "runtime",
}

FORBIDDEN_OVERRIDES = {  # in the closed division; OPEN_OVERRIDES lifts the architecture dials in the open one
    "aspect_ratio": "the model's shape derives from --depth; another shape is another architecture",
    "head_dim": "the model's shape derives from --depth; another shape is another architecture",
    "window_pattern": "the attention windows are part of the architecture the eval and server load",
    "max_seq_len": "the track fixes the row length: it shapes the data stream and the rows the eval scores",
    "vocab_size": "the tokenizer is the track's; the trainer takes the vocabulary from it",
    "eval_every": "evaluation is the harness's: when it runs is not the submission's choice",
    "eval_tokens": "the eval budget is the track's target definition",
    "time_budget_s": "a fixed-budget track's budget is what every submission is measured in",
    "save_every": "checkpoint cadence belongs to whoever runs the job (spot instances), not to the recipe",
    "seed": "the harness assigns seeds; choosing them would pick the lucky ones",
}
# The architecture dials: forbidden in the closed division (the model is the track's), the submission's in the
# open one, where they reach build_model through plan.model_config.
OPEN_OVERRIDES = {"aspect_ratio": "architecture", "head_dim": "architecture", "window_pattern": "architecture"}
DIVISIONS = ("closed", "open")  # open: the submission defines build_model (the table in the docstring)


# ---------------------------------------------------------------------------------------- hooks


class Schedule(Protocol):
    """What `build_schedule` returns (`baseline.schedule.Schedule` is the baseline's): finite floats.

    `progress` in [0, 1] is the fraction of the run done: step / num_iterations on a track with a step
    horizon, timed seconds / budget on a fixed-budget track (where the step count is not known ahead).
    """

    def lr_multiplier(self, step: int, progress: float) -> float: ...  # every group's lr = initial_lr × this
    def muon_momentum(self, step: int, progress: float) -> float: ...  # set on groups with kind 'muon'
    def muon_weight_decay(self, step: int, progress: float) -> float: ...  # set on groups with kind 'muon'


# build_optimizer(model, plan, compute_dtype): every trainable parameter of `model` in exactly one
# param group, each group with 'initial_lr' (the schedule scales it) and, for Muon groups, kind 'muon'.
BuildOptimizer = Callable[[torch.nn.Module, TrainPlan, torch.dtype], torch.optim.Optimizer]
BuildSchedule = Callable[[TrainPlan], Schedule]
# build_model(plan, device, compute_dtype): the open division's model, initialised on `device` (see above).
BuildModel = Callable[[TrainPlan, torch.device | str, torch.dtype], torch.nn.Module]
HOOK_NAMES = ("METADATA", "CONFIG", "build_optimizer", "build_schedule", "KERNELS", "build_model")


@dataclass(frozen=True)
class KernelSpec:
    """A named operation: its baseline reference, its call signature and how close a replacement must be.

    Closeness, fp32: |candidate − reference| ≤ atol + rtol·|reference| elementwise, for the output and for
    the gradient of every tensor input, on random inputs of the model's shapes (`submissions/conformance.py`).
    orthogonalize is compared after a whole Muon step: ‖Δ − Δ_ref‖_F ≤ rtol·‖Δ_ref‖_F per matrix.
    """

    reference: Callable
    signature: str
    rtol: float
    atol: float


KERNEL_SPECS = {
    "attention": KernelSpec(
        attention, "(q, k, v: (B, T, H, D), window: int) -> (B, T, H, D); causal, keys t-window..t", 1e-4, 1e-5
    ),
    "rms_norm": KernelSpec(base.rms_norm, "(x: (..., C)) -> (..., C); no weight, eps of the dtype", 1e-5, 1e-5),
    "rotary": KernelSpec(base.rotary, "(x: (B, T, H, D), cos, sin: (1, T, 1, D/2)) -> (B, T, H, D)", 1e-5, 1e-6),
    "mlp_activation": KernelSpec(base.relu_squared, "(x: (..., 4C)) -> relu(x)²", 1e-5, 1e-6),
    "softcap_cross_entropy": KernelSpec(
        base.softcap_cross_entropy,
        "(logits: (B, T, V) fp32, targets: (B, T), reduction='mean'|'none') -> loss; targets -1 ignored",
        1e-5,
        1e-6,
    ),
    "orthogonalize": KernelSpec(polar_express, "(X: (K, m, n), ns_steps: int) -> polar factor of each X", 1e-3, 0.0),
}
# An orthogonalize that is NOT equivalent is an optimizer change: pass it to MuonAdamW in build_optimizer.


# ---------------------------------------------------------------------------------------- loaded


@dataclass(frozen=True)
class Submission:
    name: str
    path: Path  # the folder (or single .py file) that provenance hashes
    source: Path  # the module file
    metadata: dict
    config_overrides: dict = field(default_factory=dict)  # validated TrainConfig field -> value
    build_optimizer: BuildOptimizer | None = None
    build_schedule: BuildSchedule | None = None
    kernels: dict[str, Callable] = field(default_factory=dict)  # validated names of KERNEL_SPECS
    build_model: BuildModel | None = None  # defined: the open division

    @property
    def division(self) -> str:
        return "open" if self.build_model is not None else "closed"

    def hooks(self) -> Hooks:
        """The trainer's hooks: the submission's where it has them, the baseline's elsewhere."""
        model_kernels = {k: fn for k, fn in self.kernels.items() if k != "orthogonalize"}
        return Hooks(
            build_optimizer=self.build_optimizer
            or _default_optimizer(self.division, self.kernels.get("orthogonalize")),
            build_schedule=self.build_schedule or baseline_schedule,
            kernels=base.Kernels(**model_kernels),
            build_model=self.build_model,
        )


def _default_optimizer(division: str, orthogonalize: Callable | None) -> BuildOptimizer:
    """The baseline's optimizer (the open division: over open_param_groups), with the submission's orthogonalize."""
    if division == "closed" and orthogonalize is None:
        return baseline_optimizer
    extra = {} if orthogonalize is None else {"orthogonalize": orthogonalize}

    def build_optimizer(model, plan, compute_dtype):
        if division == "open":
            return open_optimizer(model, plan, compute_dtype, **extra)
        groups = build_param_groups(model, **plan.optimizer_kwargs())
        return MuonAdamW(groups, compute_dtype=compute_dtype, **extra)

    return build_optimizer


# ---------------------------------------------------------------------------------------- loading


def resolve(name_or_path: str | Path) -> tuple[str, Path, Path]:
    """(name, path, module file) of a submission given by name under submissions/ or by path.

    A name under submissions/ (dots as folders) wins over a same-named folder in the working directory,
    so `baseline` is submissions/baseline, never the frozen package.
    """
    given = str(name_or_path)
    candidates = [SUBMISSIONS_DIR / given.replace(".", "/"), Path(given)]
    path = next((c for c in candidates if c.is_dir() or c.is_file()), None)
    if path is None:
        raise SubmissionError(
            f"submission {given!r} not found (looked for {candidates[0]} and ./{given}): "
            f"create it with `speedrun new {Path(given).stem}` or pass the path of its folder or .py file"
        )
    source = path / MODULE_FILE if path.is_dir() else path
    if not source.is_file() or source.suffix != ".py":
        raise SubmissionError(f"submission {given!r} has no {source.name}: put the plug-in in {path / MODULE_FILE}")
    return path.stem, path, source


def load_submission(name_or_path: str | Path) -> Submission:
    """Import a submission and validate everything that needs no model; SubmissionError if it breaks the contract."""
    name, path, source = resolve(name_or_path)
    module = _import(name, source)
    where = f"submission {name} ({source})"
    if not hasattr(module, "METADATA"):
        raise SubmissionError(f"{where} has no METADATA: add METADATA = {{'authors': [...], 'description': '...'}}")
    misspelt = _misspelt_hook(module)
    if misspelt:
        raise SubmissionError(
            f"{where} defines {misspelt[0]!r}, which the trainer never reads: did you mean {misspelt[1]!r}? "
            "(as written the baseline's would be used)"
        )
    kernels = _dict(module, "KERNELS", where)
    unknown = sorted(set(kernels) - set(KERNEL_SPECS))
    if unknown:
        raise SubmissionError(
            f"{where}: unknown kernel {unknown[0]!r} in KERNELS: the named operations are {sorted(KERNEL_SPECS)}"
        )
    hooks = {h: getattr(module, h, None) for h in ("build_optimizer", "build_schedule", "build_model")}
    for hook, fn in (hooks | kernels).items():
        if fn is not None and not callable(fn):
            raise SubmissionError(f"{where}: {hook} is not a function (got {type(fn).__name__}): define it with `def`")
    division = "open" if hooks["build_model"] is not None else "closed"
    if division == "open":
        _check_open_hooks(hooks["build_model"], kernels, where)
    if "orthogonalize" in kernels and hooks["build_optimizer"] is not None:
        raise SubmissionError(
            f"{where} sets both build_optimizer and KERNELS['orthogonalize']: pass your orthogonalize to "
            "MuonAdamW(..., orthogonalize=) inside build_optimizer and drop it from KERNELS"
        )
    return Submission(
        name=name,
        path=path,
        source=source,
        metadata=validate_metadata(module.METADATA, where),
        config_overrides=validate_overrides(_dict(module, "CONFIG", where), where, division),
        kernels=kernels,
        **hooks,
    )


def _check_open_hooks(build_model: Callable, kernels: dict, where: str) -> None:
    if build_model is build_gpt:
        raise SubmissionError(
            f"{where}: its build_model is baseline.checkpoint.build_model imported under the hook's name, which "
            "makes a submission open: import it as another name (from baseline.checkpoint import build_model as "
            "build_gpt)"
        )
    try:
        inspect.signature(build_model).bind("plan", "device", "compute_dtype")
    except TypeError as e:
        raise SubmissionError(
            f"{where}: build_model cannot be called as build_model(plan, device, compute_dtype) ({e}): give it "
            "those three parameters"
        ) from e
    except ValueError:
        pass  # a builtin or C callable without a signature: the conformance check calls it
    model_kernels = sorted(set(kernels) - {"orthogonalize"})
    if model_kernels:
        raise SubmissionError(
            f"{where}: KERNELS[{model_kernels[0]!r}] replaces an operation of the baseline model, which an open "
            "submission does not train: call your kernel inside build_model's modules and drop it from KERNELS"
        )


def _misspelt_hook(module) -> tuple[str, str] | None:
    """(name, hook) for a dict or function whose name is close to a hook the module does not define."""
    for attr, value in vars(module).items():
        if attr in HOOK_NAMES or not (isinstance(value, dict) or inspect.isfunction(value)):
            continue
        # dicts are the UPPERCASE hooks (CONFIG = ..., KERNELS = ...), functions the lowercase ones
        wanted = [h for h in HOOK_NAMES if h.isupper() == isinstance(value, dict) and not hasattr(module, h)]
        close = difflib.get_close_matches(attr.upper() if isinstance(value, dict) else attr, wanted, n=1, cutoff=0.85)
        if close:
            return attr, close[0]
    return None


def _import(name: str, source: Path):
    try:
        module = import_plugin(name, source)
    except Exception as e:  # noqa: BLE001 -- any error in submission code is reported as one line
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SubmissionError(
            f"submission {name} failed to import: {type(e).__name__}: {detail}; "
            f"run `python {source}` to see the traceback"
        ) from e
    return module


def call_plugin(where: str, what: str, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) of submission code; any exception it raises becomes a one-line SubmissionError."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- any error in submission code is reported as one line
        detail = (str(e).strip().splitlines() or [""])[0]
        raise SubmissionError(
            f"{where}: {what} raised {type(e).__name__}: {detail}; fix it, then rerun the check"
        ) from e


def _dict(module, attr: str, where: str) -> dict:
    value = getattr(module, attr, None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SubmissionError(f"{where}: {attr} must be a dict, got {type(value).__name__}")
    return dict(value)


def validate_metadata(metadata, where: str) -> dict:
    if not isinstance(metadata, dict):
        raise SubmissionError(f"{where}: METADATA must be a dict, got {type(metadata).__name__}")
    for key, kind in METADATA_REQUIRED.items():
        if key not in metadata:
            raise SubmissionError(f"{where}: METADATA lacks {key!r}: add {key!r}: {kind.__name__}(...) to METADATA")
    unknown = sorted(set(metadata) - set(METADATA_REQUIRED) - set(METADATA_OPTIONAL))
    if unknown:
        known = sorted(METADATA_REQUIRED) + sorted(METADATA_OPTIONAL)
        raise SubmissionError(f"{where}: unknown METADATA key {unknown[0]!r}: the keys are {known}")
    for key, kind in (METADATA_REQUIRED | METADATA_OPTIONAL).items():
        value = metadata.get(key)
        if key in metadata and not (
            isinstance(value, kind) and value and all(isinstance(v, str) for v in _items(value))
        ):
            raise SubmissionError(f"{where}: METADATA[{key!r}] must be a non-empty {kind.__name__} of text")
    return dict(metadata)


def _items(value) -> list:
    return value if isinstance(value, list) else [value]


def validate_overrides(overrides: dict, where: str, division: str = "closed") -> dict:
    """The CONFIG dict, checked field by field against the tables (of the division) and the field types."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    allowed = {**ALLOWED_OVERRIDES, **(OPEN_OVERRIDES if division == "open" else {})}
    for key, value in overrides.items():
        if key in FORBIDDEN_OVERRIDES and key not in allowed:
            hint = ", or define build_model to enter the open division" if key in OPEN_OVERRIDES else ""
            raise SubmissionError(
                f"{where}: CONFIG may not set {key!r} in the {division} division: {FORBIDDEN_OVERRIDES[key]}; "
                f"remove it{hint}"
            )
        if key not in allowed:
            raise SubmissionError(
                f"{where}: CONFIG key {key!r} is not a TrainConfig field: the allowed ones are {sorted(allowed)}"
            )
        if not _has_type(value, types[key]):
            kind = getattr(types[key], "__name__", str(types[key]))
            raise SubmissionError(f"{where}: CONFIG[{key!r}] = {value!r} is not {kind}: give a value of that type")
    return dict(overrides)


def _has_type(value, kind) -> bool:
    if kind == bool | None:
        return value is None or isinstance(value, bool)
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def check_eval_budget(config: TrainConfig, world_size: int = 1) -> None:
    """The eval must score exactly the track's val tokens, whatever batch a submission picked."""
    rows_tokens = config.device_batch_size * config.max_seq_len * world_size
    if config.eval_tokens % rows_tokens:
        raise SubmissionError(
            f"eval_tokens {config.eval_tokens:,} is not a multiple of device_batch_size {config.device_batch_size} × "
            f"max_seq_len {config.max_seq_len} × world_size {world_size}, so the eval would score fewer tokens than "
            "the track's: pick a device_batch_size that divides it"
        )
