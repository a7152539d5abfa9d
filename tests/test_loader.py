"""The BOS best-fit loader gives nanochat's exact batches and states, and fails clearly on bad input."""

import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from baseline.loader import DocumentBuffer, bos_bestfit_batches, pack_row
from baseline.tokenizer import Tokenizer
from tests.conftest import load_json

SCENARIOS = [
    "ws1",
    "ws1_resume",
    "ws1_long",
    "val_ws1",
    "ws2_rank0",
    "ws2_rank0_resume",
    "ws2_rank1",
    "ws2_rank1_resume",
]


@pytest.fixture(scope="module")
def tok(golden):
    return Tokenizer.load(golden / "tokenizer")


class RememberingTokenizer:
    """The golden tokenizer, remembering encodings: the scenarios share most of their documents,
    and tokenizing them again in every scenario would be most of this file's run time."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.bos_id, self.seen = tok, tok.bos_id, {}

    def encode(self, texts: list[str], prepend: int, num_threads: int) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if (t, prepend) not in self.seen]
        for text, ids in zip(new, self.tok.encode(new, prepend=prepend, num_threads=num_threads), strict=True):
            self.seen[text, prepend] = ids
        return [self.seen[t, prepend] for t in texts]


@pytest.fixture(scope="module")
def remembering_tok(tok):
    return RememberingTokenizer(tok)


@pytest.fixture(scope="module")
def regrouped_dir(pretrain_dir, golden, tmp_path_factory):
    """The shared shards rewritten with 100-row row groups, as the golden 2-rank scenarios used."""
    rows = load_json(golden / "loader" / "scenarios.json")["regroup_rows"]
    out = tmp_path_factory.mktemp("regrouped")
    for path in sorted(pretrain_dir.glob("*.parquet")):
        pq.write_table(pq.read_table(path), out / path.name, row_group_size=rows)
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_loader_scenario_matches_golden(name, remembering_tok, golden, pretrain_dir, regrouped_dir):
    spec = load_json(golden / "loader" / "scenarios.json")["scenarios"][name]
    expected = load_file(golden / "loader" / "batches.safetensors")
    loader = bos_bestfit_batches(
        remembering_tok,
        spec["B"],
        spec["T"],
        spec["split"],
        regrouped_dir if spec["world_size"] == 2 else pretrain_dir,
        rank=spec["rank"],
        world_size=spec["world_size"],
        resume_state=spec.get("resume_state_dict"),
    )
    batches = [next(loader) for _ in range(spec["n_batches"])]
    nanochat_keys = ("pq_idx", "rg_idx", "epoch")
    assert [{k: state[k] for k in nanochat_keys} for _, _, state in batches] == spec["states"]
    inputs = torch.stack([x for x, _, _ in batches])  # earlier batches stay valid after later ones
    targets = torch.stack([y for _, y, _ in batches])
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs, expected[f"{name}.inputs"])
    assert torch.equal(targets, expected[f"{name}.targets"])
    assert (inputs[:, :, 0] == remembering_tok.bos_id).all()


def reference_pack(lengths: list[int], B: int, T: int, buffer_size: int) -> np.ndarray:
    """nanochat's packing with a plain list scanned in full for every placement (the slow reference).

    Document k is `k` repeated, so the output shows which document went where.
    """
    stream = iter(np.full(n, k, dtype=np.int64) for k, n in enumerate(lengths))
    buffer: list[np.ndarray] = []
    rows = np.empty((B, T + 1), dtype=np.int64)
    for row in rows:
        pos = 0
        while pos < T + 1:
            while len(buffer) < buffer_size:
                buffer.append(next(stream))
            space = T + 1 - pos
            fitting = [i for i, d in enumerate(buffer) if len(d) <= space]
            if fitting:
                best = max(fitting, key=lambda i: (len(buffer[i]), -i))  # longest, first on ties
                doc = buffer.pop(best)
                row[pos : pos + len(doc)] = doc
                pos += len(doc)
            else:
                doc = buffer.pop(min(range(len(buffer)), key=lambda i: len(buffer[i])))
                row[pos:] = doc[:space]
                pos = T + 1
    return rows


def test_bucketed_buffer_packs_exactly_like_a_list_scan():
    rng = random.Random(0)
    B, T, buffer_size = 16, 64, 20
    # Few distinct lengths, so ties are common; some longer than a row, so crops happen.
    lengths = [rng.choice([1, 2, 3, 5, 8, 13, 30, 64, 65, 100]) for _ in range(5000)]
    stream = iter((np.full(n, k, dtype=np.int64), (0, 0, k)) for k, n in enumerate(lengths))
    buffer = DocumentBuffer()

    def refill():
        while buffer.count < buffer_size:
            buffer.add(*next(stream))

    rows = np.empty((B, T + 1), dtype=np.int64)
    for row in rows:
        pack_row(row, buffer, refill)
    assert np.array_equal(rows, reference_pack(lengths, B, T, buffer_size))


def test_bad_data_dirs_fail_at_the_call_with_one_line(tok, pretrain_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no parquet shards in") as e:
        bos_bestfit_batches(tok, 2, 16, "train", tmp_path / "missing")
    assert "\n" not in str(e.value)
    shutil.copy(pretrain_dir / "shard_00004.parquet", tmp_path)
    with pytest.raises(ValueError, match="need at least 2"):
        bos_bestfit_batches(tok, 2, 16, "train", tmp_path)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        bos_bestfit_batches(tok, 2, 16, "train", pretrain_dir, rank=2, world_size=2)
    with pytest.raises(ValueError, match="must have exactly pq_idx, rg_idx, epoch"):
        bos_bestfit_batches(tok, 2, 16, "train", pretrain_dir, resume_state={"pq_idx": 0})


def test_corrupt_shard_fails_naming_it(tok, tmp_path):
    (tmp_path / "shard_00000.parquet").write_bytes(b"garbage")
    (tmp_path / "shard_00001.parquet").write_bytes(b"garbage")
    loader = bos_bestfit_batches(tok, 2, 16, "train", tmp_path)
    with pytest.raises(ValueError, match="cannot read shard .*shard_00000.parquet") as e:
        next(loader)
    assert "\n" not in str(e.value)


def test_more_ranks_than_row_groups_fails_instead_of_hanging(tok, pretrain_dir):
    # The val shard has 4 row groups: rank 5 of 6 would never see a document.
    loader = bos_bestfit_batches(tok, 2, 16, "val", pretrain_dir, rank=5, world_size=6)
    with pytest.raises(ValueError, match="rank 5 of 6 gets no documents"):
        next(loader)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(tok, pretrain_dir):
    cpu = bos_bestfit_batches(tok, 4, 256, "train", pretrain_dir)
    cuda = bos_bestfit_batches(tok, 4, 256, "train", pretrain_dir, device="cuda")
    for _ in range(6):
        (x, y, s), (xc, yc, sc) = next(cpu), next(cuda)
        assert xc.is_cuda and s == sc
        assert torch.equal(x, xc.cpu()) and torch.equal(y, yc.cpu())


@pytest.mark.parametrize("rank, world_size, T", [(0, 1, 256), (0, 1, 2048), (1, 2, 256)])
def test_exact_resume_yields_the_same_batches(golden, pretrain_dir, regrouped_dir, rank, world_size, T):
    """Resuming from the state of batch k re-yields batch k and then the uninterrupted stream."""
    tok = Tokenizer.load(golden / "tokenizer")
    data_dir = regrouped_dir if world_size == 2 else pretrain_dir
    kwargs = dict(rank=rank, world_size=world_size)
    loader = bos_bestfit_batches(tok, 4, T, "train", data_dir, **kwargs)
    batches = [next(loader) for _ in range(12)]
    for k in (0, 5, 11):
        resumed = bos_bestfit_batches(tok, 4, T, "train", data_dir, resume_state=batches[k][2], **kwargs)
        for x, y, state in batches[k:]:
            rx, ry, rstate = next(resumed)
            assert torch.equal(rx, x) and torch.equal(ry, y)
            assert rstate == state
