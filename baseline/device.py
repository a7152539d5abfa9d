"""Device, dtype and process-group set-up: one process is just the 1-rank case of `torchrun`.

`init_runtime()` reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); with more than one
rank it joins a process group (NCCL on CUDA, gloo on CPU). Also here: the compute dtype rule, the
device synchronize that bounds every timed step, and the peak-FLOPs table behind MFU.
"""

import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    compute_dtype: torch.dtype

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA with SM >= 8.0, fp32 elsewhere; SPEEDRUN_DTYPE (or NANOCHAT_DTYPE) overrides."""
    name = os.environ.get("SPEEDRUN_DTYPE") or os.environ.get("NANOCHAT_DTYPE")
    if name:
        choices = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        if name not in choices:
            raise ValueError(f"SPEEDRUN_DTYPE={name!r} is not one of {', '.join(choices)}")
        return choices[name]
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float32


def autodetect_device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def init_runtime(device_type: str | None = None, seed: int = 42) -> Runtime:
    """Pick the device, join the process group if launched by torchrun, seed every RNG."""
    device_type = device_type or autodetect_device_type()
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls that remain
    else:
        device = torch.device(device_type)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device_type == "cuda" else None)
        dist.barrier()
    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
    return Runtime(device, rank, local_rank, world_size, compute_dtype(device))


def destroy_runtime():
    if dist.is_initialized():
        dist.destroy_process_group()


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def max_across_ranks(value: float, device: torch.device) -> float:
    """The same number on every rank: the slowest rank's (used for step times)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def sum_across_ranks(value: float, device: torch.device) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item()


# Dense bf16 peak FLOP/s by device name, first match wins (nanochat common.py; lowercased substrings).
_PEAK_BF16 = [
    (("gb200",), 2.5e15),
    (("grace blackwell",), 2.5e15),
    (("b200",), 2.25e15),
    (("b100",), 1.8e15),
    (("h200", "nvl"), 836e12),
    (("h200", "pcie"), 836e12),
    (("h200",), 989e12),
    (("h100", "nvl"), 835e12),
    (("h100", "pcie"), 756e12),
    (("h100",), 989e12),
    (("h800", "nvl"), 989e12),
    (("h800",), 756e12),
    (("a100",), 312e12),
    (("a800",), 312e12),
    (("a40",), 149.7e12),
    (("a30",), 165e12),
    (("l40s",), 362e12),
    (("l40-s",), 362e12),
    (("l40 s",), 362e12),
    (("l4",), 121e12),
    (("mi355",), 2.5e15),
    (("mi325",), 1.3074e15),
    (("mi300x",), 1.3074e15),
    (("mi300a",), 980.6e12),
    (("mi250x",), 383e12),
    (("mi250",), 362.1e12),
    (("5090",), 209.5e12),
    (("4090",), 165.2e12),
    (("3090",), 71e12),
]


def peak_flops(device: torch.device) -> float:
    """Peak bf16 FLOP/s of one device; inf where unknown (CPU, MPS), which makes MFU read 0."""
    if device.type != "cuda":
        return float("inf")
    name = torch.cuda.get_device_name(device).lower()
    if "data center gpu max 1550" in name:
        return 512 * torch.cuda.get_device_properties(device).multi_processor_count * 1300e6
    for parts, flops in _PEAK_BF16:
        if all(p in name for p in parts):
            return flops
    return float("inf")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"
