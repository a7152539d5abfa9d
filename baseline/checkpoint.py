"""Checkpoints as plain files, never pickles: safetensors weights, JSON meta, per-rank optimizer state.

A checkpoint is a directory `<run>/checkpoints/step_000123/` holding
- `model.safetensors`: the model's state_dict with nanochat's keys;
- `meta.json`: `step`, `model_config` (GPTConfig fields), `tokenizer_hash` (its content hash: the
  tokenizer is found by it in the cache, or passed explicitly), and what the trainer
  needs to resume (train config, loader state, loop state); an open-division checkpoint also has
  `division: "open"` and `submission: {name, hash}`: its weights fit that submission's model code only
  (eval/open_model.py loads them), and `load_model` refuses it;
- `optim_rank{r}.safetensors` + `optim_rank{r}.json`: each rank's (sharded) optimizer state, tensors
  in safetensors and the rest (param groups, scalar state) in JSON.
It is written into a `.tmp` directory and renamed when complete, so a crash mid-save never leaves a
half checkpoint behind that resume would pick up.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from baseline.gpt import GPT, GPTConfig
from baseline.tokenizer import Tokenizer
from protocol.paths import find_tokenizer

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir(checkpoints_dir: str | Path, step: int) -> Path:
    return Path(checkpoints_dir) / f"step_{step:06d}"


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return None
    steps = [int(m.group(1)) for p in d.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return step_dir(d, max(steps)) if steps else None


def _barrier():
    if dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------ optimizer state without pickle


def _flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, rest = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for param_id, param_state in state_dict["state"].items():
        rest["state"][str(param_id)] = {}
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value.detach().contiguous().cpu()
            else:
                rest["state"][str(param_id)][name] = value
    return tensors, rest


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state = {int(pid): dict(values) for pid, values in rest["state"].items()}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    # JSON has no tuples; hyperparameters such as betas were tuples (params stay a list of ids).
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in rest["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------ save / load


def save_checkpoint(
    checkpoints_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict,
    rank: int = 0,
) -> Path:
    """Write the checkpoint of `step` (every rank calls this; rank 0 writes the model and meta)."""
    final = step_dir(checkpoints_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if optimizer is not None:
        tensors, rest = _flatten_optimizer_state(optimizer.state_dict())
        save_file(tensors, tmp / f"optim_rank{rank}.safetensors")
        (tmp / f"optim_rank{rank}.json").write_text(json.dumps(rest))
    if rank == 0:
        save_file(state_for_saving(model), tmp / "model.safetensors")
        # The trainer passes the plan's model_config (an open model need not have one); a GPT knows its own.
        meta = {"step": step, "model_config": meta.get("model_config") or model.config.to_dict(), **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    _barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _barrier()
    return final


def state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as safetensors takes it: contiguous CPU tensors, tied ones copied (it refuses shared memory)."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        tensor = value.detach().contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()  # a tied weight: stored twice, loaded back into the one parameter
        seen.add(tensor.untyped_storage().data_ptr())
        state[key] = tensor
    return state


def read_meta(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a checkpoint (no meta.json): pass a step_* directory")
    return json.loads(path.read_text())


def load_weights(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model's tensors, read with safetensors only (no code runs, no pickle)."""
    path = Path(checkpoint_dir) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} has no model.safetensors: the checkpoint is incomplete")
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 -- safetensors raises several types for a damaged file
        raise ValueError(f"{path} is corrupt ({e}); re-download or re-save the checkpoint") from e


def build_model(
    config: GPTConfig, device: torch.device | str, compute_dtype=torch.float32, kernels=None, model_class=GPT
) -> GPT:
    """A model with initialised weights on `device`, built like nanochat (meta → to_empty → init).

    model_class: a subclass of GPT (an open submission's), built and initialised the same way.
    """
    with torch.device("meta"):
        model = model_class(config, kernels)
    model.to_empty(device=device)
    model.init_weights(compute_dtype)
    return model


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor]):
    """Load nanochat-format weights: strips torch.compile's prefix and keeps each parameter's dtype."""
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"checkpoint tensor {key} has shape {tuple(value.shape)}, model {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_model(checkpoint_dir: str | Path, device="cpu", compute_dtype=torch.float32, tokenizer_dir=None):
    """(model, tokenizer, meta) from a checkpoint; the tokenizer must match the model's vocab."""
    meta = read_meta(checkpoint_dir)
    if meta.get("division") == "open":
        raise ValueError(
            f"{checkpoint_dir} holds an open-division model (submission {meta['submission']['name']}): its code is the "
            "submission's, so load it with eval.open_model (python -m eval.open_model --source DIR ...)"
        )
    config = GPTConfig(**meta["model_config"])
    tok_dir = tokenizer_dir or (find_tokenizer(meta["tokenizer_hash"]) if meta.get("tokenizer_hash") else None)
    if tok_dir is None:
        raise ValueError(
            f"{checkpoint_dir}: its tokenizer (hash {str(meta.get('tokenizer_hash'))[:12]}…) is not in this machine's "
            "cache: pass --tokenizer DIR"
        )
    tokenizer = Tokenizer.load(tok_dir)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"tokenizer {tok_dir} has vocab {tokenizer.vocab_size} but the checkpoint was trained with "
            f"{config.vocab_size}: pass the tokenizer the run used (--tokenizer DIR)"
        )
    model = build_model(config, device, compute_dtype)
    load_state_into(model, load_weights(checkpoint_dir))
    model.eval()
    return model, tokenizer, meta


def load_optimizer_state(checkpoint_dir: str | Path, optimizer: torch.optim.Optimizer, rank: int = 0):
    d = Path(checkpoint_dir)
    tensors_path, rest_path = d / f"optim_rank{rank}.safetensors", d / f"optim_rank{rank}.json"
    if not (tensors_path.is_file() and rest_path.is_file()):
        raise FileNotFoundError(
            f"{d} has no optimizer state for rank {rank}: resume with the same number of ranks it was saved with"
        )
    state = _unflatten_optimizer_state(load_file(tensors_path), json.loads(rest_path.read_text()))
    optimizer.load_state_dict(state)
