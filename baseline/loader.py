"""nanochat's BOS-aligned best-fit data loader (nanochat/dataloader.py), bit-exact and faster.

Every row of a batch starts with BOS and is filled with whole documents, longest that fits
first; when none fits, the shortest buffered document is cropped to fill the row. No padding,
no ignored targets; about a third of the tokens are dropped at T=2048. Usage:

    loader = bos_bestfit_batches(tok, B, T, "train", data_dir, rank=rank, world_size=world, device=dev)
    inputs, targets, state = next(loader)   # (B, T) int64 each; state resumes a later loader
"""

import bisect
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from baseline.dataset import Shard, split_files
from baseline.tokenizer import Tokenizer

# {"pq_idx", "rg_idx", "epoch"} of the most recently read row group (nanochat's state), plus
# "resume": the exact position before the batch it came with (see `bos_bestfit_batches`).
State = dict
DocId = tuple[int, int, int]  # (pq_idx, rg_idx, row within the row group): where a document lives


def document_chunks(
    files: list[Path],
    rank: int,
    world_size: int,
    resume_state: State | None,
    chunk_size: int,
    after_chunk: dict | None = None,
) -> Iterator[tuple[list[str], State, int]]:
    """Texts in chunks of `chunk_size`, each tagged with its row group and its offset in it, forever.

    Rank r reads row groups r, r+W, r+2W, ... of every file; `epoch` counts passes from 1. On
    resume the first pass starts at file `pq_idx`, at this rank's first row group after `rg_idx`
    (or at the next file if there is none); the documents buffered before the save are lost.
    `after_chunk` ({pq_idx, rg_idx, offset, epoch} of a chunk) instead continues exactly after it.
    """
    if after_chunk is not None:
        a = after_chunk
        start = (a["pq_idx"], a["rg_idx"], a["offset"] + chunk_size, a["epoch"])
    elif resume_state is not None:
        r = resume_state
        start = (r["pq_idx"], (r["rg_idx"] // world_size + 1) * world_size + rank, 0, r["epoch"])
    else:
        start = (0, rank, 0, 1)
    pq_start, rg_start, offset_start, epoch = start
    first_pass = True
    while True:
        partial_pass, produced = first_pass and start != (0, rank, 0, 1), False
        for pq_idx in range(pq_start if first_pass else 0, len(files)):
            shard = Shard(files[pq_idx])
            resuming_here = first_pass and pq_idx == pq_start
            for rg in range(rg_start if resuming_here else rank, shard.num_row_groups, world_size):
                texts = shard.texts(rg)
                offset = offset_start if resuming_here and rg == rg_start else 0
                for i in range(offset, len(texts), chunk_size):
                    produced = True
                    yield texts[i : i + chunk_size], {"pq_idx": pq_idx, "rg_idx": rg, "epoch": epoch}, i
        if not produced and not partial_pass:
            raise ValueError(
                f"rank {rank} of {world_size} gets no documents from {len(files)} shards "
                f"({files[0].parent}): use fewer ranks or shards with more row groups"
            )
        first_pass = False
        epoch += 1


class DocumentBuffer:
    """Tokenized documents by length, each length's documents in arrival order.

    Equivalent to nanochat's list scanned in full for every placement ("longest that fits,
    first on ties"; "shortest, first on ties"), because removing documents from a list keeps
    the order of the rest: among equal lengths, buffer order is arrival order.
    """

    def __init__(self):
        self.by_length: dict[int, deque[tuple[int, np.ndarray]]] = {}  # length -> (seq, doc) in arrival order
        self.lengths: list[int] = []  # sorted distinct lengths present
        self.live: dict[int, DocId] = {}  # seq -> where the document came from; dicts keep arrival order
        self.seq = 0

    @property
    def count(self) -> int:
        return len(self.live)

    def add(self, doc: np.ndarray, doc_id: DocId) -> None:
        n = len(doc)
        if n not in self.by_length:
            self.by_length[n] = deque()
            bisect.insort(self.lengths, n)
        self.by_length[n].append((self.seq, doc))
        self.live[self.seq] = doc_id
        self.seq += 1

    def snapshot(self) -> list[DocId]:
        """Where every buffered document came from, in arrival order: enough to rebuild the buffer."""
        return list(self.live.values())

    def pop_longest_fitting(self, space: int) -> np.ndarray | None:
        i = bisect.bisect_right(self.lengths, space) - 1
        return self._pop(self.lengths[i]) if i >= 0 else None

    def pop_shortest(self) -> np.ndarray:
        return self._pop(self.lengths[0])

    def _pop(self, n: int) -> np.ndarray:
        bucket = self.by_length[n]
        seq, doc = bucket.popleft()
        if not bucket:
            del self.by_length[n]
            del self.lengths[bisect.bisect_left(self.lengths, n)]
        del self.live[seq]
        return doc


def pack_row(row: np.ndarray, buffer: DocumentBuffer, refill: Callable[[], None]) -> None:
    """Fill `row` (T+1,) from position 0: best-fit whole documents, then crop the shortest."""
    pos, size = 0, len(row)
    while pos < size:
        refill()
        doc = buffer.pop_longest_fitting(size - pos)
        if doc is None:
            row[pos:] = buffer.pop_shortest()[: size - pos]
            return
        row[pos : pos + len(doc)] = doc
        pos += len(doc)


def bos_bestfit_batches(
    tokenizer: Tokenizer,
    B: int,
    T: int,
    split: str,
    data_dir: str | os.PathLike,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    resume_state: State | None = None,
    buffer_size: int = 1000,
    tokenizer_batch_size: int = 128,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, State]]:
    """Yield `(inputs, targets, state)` forever: int64 (B, T) on `device`, and the loader state.

    The buffer is topped up to `buffer_size` documents before every placement decision. `state`
    has nanochat's keys (the tag of the most recently tokenized chunk): passed back as
    `resume_state` it continues approximately (next row group, empty buffer), as nanochat does.
    With its "resume" key as well (where the stream stood and which documents were buffered
    *before* this batch was packed), it continues exactly: the loader rebuilds the buffer by
    re-reading those documents and yields this very batch again, then the rest of the stream.
    """
    # Checked here, not at the first next(), so that a bad setup fails at the call.
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}: pass the rank of this process")
    if resume_state is not None and set(resume_state) - {"resume"} != {"pq_idx", "rg_idx", "epoch"}:
        raise ValueError(f"resume_state {resume_state} must have exactly pq_idx, rg_idx, epoch (and resume)")
    files = split_files(data_dir, split)
    exact = (resume_state or {}).get("resume")
    after_chunk = exact["stream"] if exact else None
    # An exact snapshot taken before any chunk was read is simply a fresh start.
    approximate = None if exact else resume_state
    chunks = document_chunks(files, rank, world_size, approximate, tokenizer_batch_size, after_chunk)
    buffer = DocumentBuffer()
    if exact:
        _restore_buffer(buffer, exact["buffer"], files, tokenizer)
    to_device = _DeviceStager(B, T, torch.device(device))
    return _batches(tokenizer, B, T, chunks, to_device, buffer, buffer_size, after_chunk)


def _tokenize(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    ids = tokenizer.encode(texts, prepend=tokenizer.bos_id, num_threads=4)
    # One array per chunk; the documents are views into it.
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
    ends = np.cumsum([len(doc) for doc in ids])
    return np.split(flat, ends[:-1])


def _restore_buffer(buffer: DocumentBuffer, doc_ids: list, files: list[Path], tokenizer: Tokenizer) -> None:
    """Re-read and re-tokenize the buffered documents of a snapshot, adding them in their old order."""
    rows_by_group: dict[tuple[int, int], list[int]] = {}
    for pq_idx, rg_idx, row in doc_ids:
        rows_by_group.setdefault((pq_idx, rg_idx), []).append(row)
    docs = {}
    for (pq_idx, rg_idx), rows in rows_by_group.items():
        texts = Shard(files[pq_idx]).texts(rg_idx)
        for row, doc in zip(rows, _tokenize(tokenizer, [texts[r] for r in rows]), strict=True):
            docs[(pq_idx, rg_idx, row)] = doc
    for doc_id in doc_ids:
        buffer.add(docs[tuple(doc_id)], tuple(doc_id))


def _batches(
    tokenizer: Tokenizer,
    B: int,
    T: int,
    chunks: Iterator[tuple[list[str], State, int]],
    to_device: "_DeviceStager",
    buffer: DocumentBuffer,
    buffer_size: int,
    last_chunk: dict | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, State]]:
    state: State = {k: last_chunk[k] for k in ("pq_idx", "rg_idx", "epoch")} if last_chunk else {}

    def refill() -> None:
        nonlocal state, last_chunk
        while buffer.count < buffer_size:
            texts, state, offset = next(chunks)
            last_chunk = {**state, "offset": offset}
            for i, doc in enumerate(_tokenize(tokenizer, texts)):
                buffer.add(doc, (state["pq_idx"], state["rg_idx"], offset + i))

    rows = np.empty((B, T + 1), dtype=np.int64)
    while True:
        resume = {"stream": last_chunk, "buffer": buffer.snapshot()}
        for row in rows:
            pack_row(row, buffer, refill)
        inputs, targets = to_device(rows)
        yield inputs, targets, {**state, "resume": resume}


class _DeviceStager:
    """Turns packed rows (B, T+1) into `inputs = rows[:, :-1]`, `targets = rows[:, 1:]` on the device.

    Every call returns new tensors, so a caller may keep earlier batches. On CUDA the batch is
    staged in pinned memory and sent with one non-blocking copy; two staging buffers alternate,
    and each waits for its previous copy to finish before it is overwritten.
    """

    def __init__(self, B: int, T: int, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        n = 2 if self.cuda else 0
        self.staging = [torch.empty(2, B, T, dtype=torch.int64, pin_memory=True) for _ in range(n)]
        self.copied = [torch.cuda.Event() for _ in range(n)]
        self.calls = 0

    def __call__(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # The shifted copies are made by numpy: torch's strided int64 copy is ~10x slower on CPU.
        if not self.cuda:
            batch = np.empty((2, rows.shape[0], rows.shape[1] - 1), dtype=np.int64)
            batch[0], batch[1] = rows[:, :-1], rows[:, 1:]
            return torch.from_numpy(batch[0]), torch.from_numpy(batch[1])
        i = self.calls % 2
        self.calls += 1
        self.copied[i].synchronize()  # returns at once if never recorded
        staging = self.staging[i].numpy()
        staging[0], staging[1] = rows[:, :-1], rows[:, 1:]
        batch = self.staging[i].to(self.device, non_blocking=True)
        self.copied[i].record(torch.cuda.current_stream(self.device))
        return batch[0], batch[1]
