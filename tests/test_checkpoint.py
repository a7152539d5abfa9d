"""Checkpoints round-trip without pickle, are atomic, and refuse what does not fit."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from baseline.checkpoint import (
    build_model,
    latest_checkpoint,
    load_model,
    load_optimizer_state,
    load_state_into,
    save_checkpoint,
)
from baseline.gpt import GPTConfig
from baseline.optim import MuonAdamW, build_param_groups
from protocol.hashing import ALL_FILES, NOT_CONTENT, tree_hash
from tests.test_gpt import GOLDEN_CONFIG

LRS = dict(unembedding_lr=0.008, embedding_lr=0.3, matrix_lr=0.02, weight_decay=0.28, scalar_lr=0.5)


def trained(steps: int = 2):
    torch.manual_seed(0)
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    optimizer = MuonAdamW(build_param_groups(model, **LRS))
    idx = torch.randint(0, 4096, (2, 64))
    for _ in range(steps):
        model(idx, idx).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return model, optimizer


def test_model_and_optimizer_state_round_trip(tmp_path, golden, monkeypatch):
    # The checkpoint names its tokenizer by content; load_model finds it in this machine's cache.
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(golden / "tokenizer", tmp_path / "cache" / "tokenizers" / "golden")
    tokenizer_hash = tree_hash(golden / "tokenizer", include=ALL_FILES, exclude=NOT_CONTENT)
    model, optimizer = trained()
    path = save_checkpoint(tmp_path / "ckpt", 2, model, optimizer, {"tokenizer_hash": tokenizer_hash})
    assert sorted(p.name for p in path.iterdir()) == [
        "meta.json", "model.safetensors", "optim_rank0.json", "optim_rank0.safetensors",
    ]  # fmt: skip
    assert str(tmp_path) not in (path / "meta.json").read_text()  # no path of this machine in a checkpoint
    loaded, tokenizer, meta = load_model(path)
    assert meta["step"] == 2 and tokenizer.vocab_size == 4096
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    fresh = MuonAdamW(build_param_groups(loaded, **LRS))
    load_optimizer_state(path, fresh)
    expected = optimizer.state_dict()
    got = fresh.state_dict()
    assert expected["param_groups"] == got["param_groups"]
    for pid, state in expected["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(got["state"][pid][name]), torch.as_tensor(value)), (pid, name)


def test_an_interrupted_save_is_never_the_latest(tmp_path):
    model, optimizer = trained(1)
    save_checkpoint(tmp_path, 1, model, optimizer, {})
    (tmp_path / "step_000002.tmp").mkdir()  # a save that crashed half-way
    assert latest_checkpoint(tmp_path).name == "step_000001"
    save_checkpoint(tmp_path, 10, model, optimizer, {})
    assert latest_checkpoint(tmp_path).name == "step_000010"


def test_nanochat_state_dicts_load(golden):
    """A nanochat state dict, even from a compiled model (`_orig_mod.` keys), loads as is."""
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    state = load_file(golden / "model" / "perturbed.safetensors")
    load_state_into(model, {f"_orig_mod.{k}": v for k, v in state.items()})
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    # bf16 embeddings (as nanochat saves them on GPUs) come back as the model's fp32.
    state["transformer.wte.weight"] = state["transformer.wte.weight"].bfloat16()
    load_state_into(model, state)
    assert model.transformer.wte.weight.dtype == torch.float32


def test_vocab_mismatch_is_refused(tmp_path, golden):
    config = GPTConfig(**{**GOLDEN_CONFIG, "vocab_size": 8192})
    model = build_model(config, "cpu")
    path = save_checkpoint(tmp_path, 1, model, None, {})
    with pytest.raises(ValueError, match="vocab 4096 but the checkpoint was trained with 8192"):
        load_model(path, tokenizer_dir=golden / "tokenizer")
    with pytest.raises(ValueError, match="not in this machine's cache: pass --tokenizer DIR"):
        load_model(path)


def test_wrong_shapes_and_corrupt_files_are_refused(tmp_path, golden):
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    state = load_file(golden / "model" / "init.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"][:100]
    with pytest.raises(ValueError, match="lm_head.weight has shape"):
        load_state_into(model, state)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_state_into(model, state)

    path = save_checkpoint(tmp_path, 1, model, None, {})
    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path, tokenizer_dir=golden / "tokenizer")
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_model(tmp_path)


def test_weights_are_read_without_pickle(tmp_path, golden):
    """A checkpoint whose weights file is a pickle is refused, not unpickled."""
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    path = save_checkpoint(tmp_path, 1, model, None, {})
    torch.save(model.state_dict(), path / "model.safetensors")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path, tokenizer_dir=golden / "tokenizer")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    assert json.loads((path / "meta.json").read_text())["model_config"] == GPTConfig(**GOLDEN_CONFIG).to_dict()
    load_model(path, tokenizer_dir=golden / "tokenizer")
