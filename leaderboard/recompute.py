"""The adapter onto the frozen parts the verifier recomputes with: weights, val bpb and CORE.

    from leaderboard import recompute
    fmt, _ = recompute.weights_format(path)               # "safetensors", or what else it is
    model, tokenizer = recompute.load_checkpoint(bundle_dir, tokenizer_dir=..., device="cpu")
    recompute.val_bpb(model, tokenizer, data_dir=..., tokens=..., batch_size=...)   # eval.bpb.val_bpb
    recompute.core(model, tokenizer, eval_bundle=..., max_per_task=-1)              # eval.run.evaluate

Weights are read with safetensors only (baseline.checkpoint.load_weights): never pickle, never a line
of the submission's code. Before any memory is allocated for the model, leaderboard/members.py has
held meta.json to the track (vocab, sequence length) and to the tensors in the safetensors header, so
a hostile meta.json cannot make the verifier build a huge model.
"""

import json
import struct
from pathlib import Path

import torch

from baseline.checkpoint import load_model
from baseline.device import compute_dtype
from eval.bpb import val_bpb as frozen_val_bpb
from eval.run import evaluate

MAX_HEADER_BYTES = 100 * 1024**2  # safetensors' own limit on the JSON header


def weights_format(path: Path) -> tuple[str, dict | None]:
    """("safetensors", header) for a real safetensors file; else (what it looks like, None).

    The layout is 8 bytes of little-endian header length N, then N bytes of JSON. torch.save writes a
    zip (`PK\\x03\\x04`) holding a pickle; a bare pickle starts with the PROTO opcode `\\x80`.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            return "a zip archive (torch.save), which holds a pickle", None
        if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
            return f"a pickle (protocol {head[1]})", None
        if len(head) < 8:
            return "too short to be safetensors", None
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n > min(MAX_HEADER_BYTES, size - 8):
            return "not safetensors (its header length is impossible)", None
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return "not safetensors (its header is not JSON)", None
    if not isinstance(header, dict):
        return "not safetensors (its header is not a JSON object)", None
    return "safetensors", header


def load_checkpoint(checkpoint_dir: Path, *, tokenizer_dir: Path, device: str = "cpu"):
    """(model, tokenizer) from a bundle's model.safetensors + meta.json, with the server's tokenizer."""
    device = torch.device(device)
    model, tokenizer, _meta = load_model(checkpoint_dir, device, compute_dtype(device), tokenizer_dir)
    return model, tokenizer


def val_bpb(model, tokenizer, *, data_dir: Path, tokens: int, batch_size: int) -> dict:
    """eval.bpb.val_bpb over the track's budget: {bpb, total_nats, total_bytes, steps, tokens, ...}."""
    return frozen_val_bpb(
        model, tokenizer, data_dir, tokens=tokens, batch_size=batch_size, seq_len=model.config.sequence_len
    )


def core(model, tokenizer, *, eval_bundle: Path | None, max_per_task: int | None) -> dict:
    """eval.run.evaluate's CORE on the server's eval bundle: {core, official, bundle, tasks, ...}."""
    max_per_task = None if max_per_task is None or max_per_task < 0 else max_per_task
    return evaluate(
        model=model, tokenizer=tokenizer, core=True, bpb=False, eval_bundle=eval_bundle, max_per_task=max_per_task
    )
