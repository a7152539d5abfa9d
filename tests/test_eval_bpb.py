"""Bits per byte equals nanochat's evaluate_bpb on the golden batches, for both golden models.

One torch thread, as in test_eval_core.py: two OpenMP threads on a shared 2-core box stall each other.
"""

import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from baseline.checkpoint import build_model
from baseline.gpt import GPTConfig
from baseline.tokenizer import Tokenizer
from eval.bpb import bpb_steps, evaluate_bpb, val_bpb, val_bpb_evaluator
from tests.conftest import load_json
from tests.test_gpt import GOLDEN_CONFIG

MODELS = {"perturbed": "model/perturbed.safetensors", "trained_step6": "optim/state_step6.safetensors"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread


@pytest.fixture(scope="module")
def tokenizer(golden):
    return Tokenizer.load(golden / "tokenizer")


@pytest.fixture(scope="module")
def val_batches(golden):
    batches = load_file(golden / "bpb" / "val_batches.safetensors")
    return list(zip(batches["inputs"], batches["targets"], strict=True))  # 4 × ((4, 256), (4, 256))


def golden_model(golden, name: str):
    model = build_model(GPTConfig(**GOLDEN_CONFIG), "cpu")
    model.load_state_dict(load_file(golden / MODELS[name]))
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bpb_equals_nanochats(golden, tokenizer, val_batches, name):
    want = load_json(golden / "bpb" / "results.json")["results"][name]
    got = evaluate_bpb(golden_model(golden, name), val_batches, tokenizer.token_bytes(), steps=4)
    assert got["total_bytes"] == want["total_bytes"]
    assert got["total_nats"] == pytest.approx(want["total_nats"], rel=1e-5)
    assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-5)


def test_bpb_from_the_val_loader_equals_nanochats(golden, tokenizer, pretrain_dir):
    """The whole path: a fresh BOS best-fit loader on the val split, 4 batches of 4 × 256."""
    want = load_json(golden / "bpb" / "results.json")["results"]["trained_step6"]
    got = val_bpb(
        golden_model(golden, "trained_step6"), tokenizer, pretrain_dir, tokens=4096, batch_size=4, seq_len=256
    )
    assert (got["total_bytes"], got["tokens"]) == (want["total_bytes"], 4096)
    assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-5)
    runtime = SimpleNamespace(rank=0, world_size=1)
    fn = val_bpb_evaluator(golden / "tokenizer", pretrain_dir, 4, 256, 4096, runtime)
    assert fn(golden_model(golden, "trained_step6"), 0) == got["bpb"]


def test_bpb_skips_zero_byte_and_ignored_targets_like_the_slow_sum(golden, tokenizer, val_batches):
    """Against a per-token float64 loop: BOS targets (0 bytes) and -1 targets count in neither sum."""
    model = golden_model(golden, "perturbed")
    token_bytes = tokenizer.token_bytes()
    inputs, targets = val_batches[0]
    targets = targets.clone()
    targets[0, :10] = tokenizer.bos_id
    targets[1, 5:50] = -1
    got = evaluate_bpb(model, [(inputs, targets)], token_bytes, steps=1)
    with torch.no_grad():
        logits = model(inputs)  # (B, T, V)
    nats = nbytes = 0.0
    for b in range(targets.size(0)):
        for t in range(targets.size(1)):
            y = int(targets[b, t])
            n = int(token_bytes[y]) if y >= 0 else 0
            if n > 0:
                nats -= torch.log_softmax(logits[b, t].double(), dim=-1)[y].item()
                nbytes += n
    assert got["total_bytes"] == nbytes
    assert got["bpb"] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-5)


def test_a_budget_below_one_batch_fails_with_one_line():
    with pytest.raises(ValueError) as e:
        bpb_steps(1000, 4, 256, 2)
    assert "less than one batch" in str(e.value) and "\n" not in str(e.value)
    assert bpb_steps(8 * 4 * 256, 4, 256, 2) == 4


def _rank_worker(rank: int, world: int, port: int, golden_dir: str, out_dir: str):
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        golden = Path(golden_dir)
        batches = load_file(golden / "bpb" / "val_batches.safetensors")
        mine = [(batches["inputs"][i], batches["targets"][i]) for i in (2 * rank, 2 * rank + 1)]
        token_bytes = Tokenizer.load(golden / "tokenizer").token_bytes()
        result = evaluate_bpb(golden_model(golden, "trained_step6"), mine, token_bytes, steps=2)
        Path(out_dir, f"rank{rank}.txt").write_text(repr(result["bpb"]))
        dist.barrier()  # gloo aborts if a rank tears down while the other still talks
    finally:
        dist.destroy_process_group()


def test_two_ranks_sum_nats_and_bytes(golden, tmp_path):
    """Each rank scores two of the four batches; the SUM reduce gives every rank the 4-batch value."""
    port = 30500 + os.getpid() % 1000
    mp.spawn(_rank_worker, args=(2, port, str(golden), str(tmp_path)), nprocs=2, join=True)
    want = load_json(golden / "bpb" / "results.json")["results"]["trained_step6"]["bpb"]
    for r in range(2):
        assert float((tmp_path / f"rank{r}.txt").read_text()) == pytest.approx(want, rel=1e-5)
