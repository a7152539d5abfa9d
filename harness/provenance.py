"""Provenance: where a number came from, as one JSON-ready dict for every run record.

    from harness import provenance
    prov = provenance.collect(submission_dir, data_files=shards, data_hash=..., tokenizer_dir=...,
                              eval_bundle=..., config=asdict(config), seed=config.seed)

It holds content hashes of the frozen code (protocol.hashing.CODE_PACKAGES), the submission, the data shards, the
tokenizer and the eval bundle; the git commit and dirty flag; the software and hardware
(`environment()`); the full resolved config and the seed. Two results are comparable only where these
agree (style habit 8). Hashes come from protocol/hashing.py: of content, never of mtimes or absolute
paths, so the same tree hashes the same on every machine; shard hashes go through the machine's hash
cache (protocol.paths.hash_cache_file()).
Nothing here raises for a missing tool (git, NVML, nvidia-smi, psutil): the field is null and a
`*_reason` says why.
"""

import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import psutil
import pynvml
import torch

from baseline.attention import backend as attention_backend
from eval.bundle import content_sha256, read_tasks
from protocol.hashing import (
    ALL_FILES,
    NOT_CONTENT,
    HashCache,
    code_hashes,
    data_fingerprint,
    folder_or_file_hash,
    tree_hash,
)
from protocol.paths import REPO, hash_cache_file
from protocol.reproduce import cpu_model

# Library versions recorded with every run (those absent are left out).
PACKAGES = ("torch", "numpy", "triton", "tiktoken", "rustbpe", "pyarrow", "safetensors", "kernels", "scipy", "pandas")


def shards_hash(files: Iterable[str | os.PathLike]) -> str:
    """The shards' fingerprint (protocol.hashing.data_fingerprint) through this machine's hash cache."""
    return data_fingerprint(files, cache=HashCache(hash_cache_file()))


def submission_ref(submission_dir: str | os.PathLike, division: str = "closed") -> dict:
    """{name, hash, division} of a submission folder (or single .py file): what records and uploads carry."""
    path = Path(submission_dir)
    return {"name": path.stem, "hash": folder_or_file_hash(path), "division": division}


def eval_bundle_hash(bundle_dir: str | os.PathLike) -> str:
    """eval.bundle.content_sha256: the files that define the CORE scores, as every CORE result records."""
    return content_sha256(bundle_dir, read_tasks(bundle_dir))


# ------------------------------------------------------------------ git


def git_info(repo_root: str | os.PathLike) -> dict:
    """{commit, dirty, branch, reason}: nulls and a reason when git is absent or this is not a repo.

    `dirty` counts modified, staged and untracked (not ignored) files: a run from an uncommitted
    submission is dirty. `branch` is None on a detached HEAD.
    """
    info = {"commit": None, "dirty": None, "branch": None, "reason": None}
    try:
        info["commit"] = _git(repo_root, "rev-parse", "HEAD")
        info["dirty"] = bool(_git(repo_root, "status", "--porcelain", "--untracked-files=normal"))
        branch = _git(repo_root, "rev-parse", "--abbrev-ref", "HEAD")
        info["branch"] = None if branch == "HEAD" else branch
    except FileNotFoundError:
        info["reason"] = "git is not installed"
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        stderr = (getattr(e, "stderr", None) or "").strip().splitlines()
        info["reason"] = stderr[0] if stderr else str(e)
    except OSError as e:
        info["reason"] = str(e)
    return info


def _git(repo_root: str | os.PathLike, *args: str) -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take the index lock of a live repo
    out = subprocess.run(
        ["git", "-C", str(repo_root), *args], capture_output=True, text=True, check=True, timeout=30, env=env
    )
    return out.stdout.strip()


# ------------------------------------------------------------------ software and hardware


def environment() -> dict:
    """Versions, host and hardware: what a time depends on besides the code."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": _nccl_version() if cuda else None,
        **_driver_version(),
        "packages": _package_versions(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_count_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "torch_num_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpus": [_gpu(i) for i in range(torch.cuda.device_count())] if cuda else [],
        # What the model's attention will run on (bf16 on CUDA; SDPA otherwise): it changes speed and rounding.
        "attention": attention_backend(torch.bfloat16, torch.device("cuda" if cuda else "cpu")),
    }


def _gpu(index: int) -> dict:
    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "memory_total_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"}


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # an NCCL-less build must not stop a run
        return None


def _driver_version() -> dict:
    """{driver, driver_reason}: NVML if importable, else nvidia-smi, else null with why."""
    reasons = []
    try:
        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return {"driver": v.decode() if isinstance(v, bytes) else v, "driver_reason": None}
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        reasons.append(f"NVML: {e}")
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return {"driver": out.stdout.strip().splitlines()[0], "driver_reason": None}
    except FileNotFoundError:
        reasons.append("nvidia-smi not found")
    except (subprocess.SubprocessError, IndexError, OSError) as e:
        reasons.append(f"nvidia-smi: {e}")
    return {"driver": None, "driver_reason": "; ".join(reasons)}


def _cpu_model() -> str | None:
    return cpu_model() or platform.processor() or None


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ------------------------------------------------------------------ all of it


def portable_argv(argv: list[str]) -> list[str]:
    """The command line as a record keeps it: the program by name, absolute paths relative to the working dir.

    A record never names a path of the machine it ran on (the same run reads the same everywhere).
    """
    out = [Path(argv[0]).name] if argv else []
    for arg in argv[1:]:
        out.append(os.path.relpath(arg) if os.path.isabs(arg) else arg)
    return out


def collect(
    *,
    submission_dir: str | os.PathLike | None = None,
    division: str = "closed",
    data_files: Iterable[str | os.PathLike] = (),
    data_hash: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    eval_bundle: str | os.PathLike | None = None,
    config: Mapping | object,
    seed: int,
    repo_root: str | os.PathLike = REPO,
) -> dict:
    """Everything above as one JSON-ready dict (protocol.record.Provenance's fields); parts not given are None.

    `data_hash` is the shards' fingerprint if the caller already has it (else it is computed). `config`
    is a dict or a dataclass (the full resolved config); values JSON cannot hold are written as str().
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a dataclass, got {type(config).__name__}")
    files = [Path(f) for f in data_files]
    data = None
    if files:
        fingerprint = data_hash or shards_hash(files)
        data = {"fingerprint": fingerprint, "num_files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return {
        "code": code_hashes(repo_root),
        "submission": submission_ref(submission_dir, division) if submission_dir is not None else None,
        "data": data,
        "tokenizer": tree_hash(tokenizer_dir, include=ALL_FILES, exclude=NOT_CONTENT) if tokenizer_dir else None,
        "eval_bundle": eval_bundle_hash(eval_bundle) if eval_bundle else None,
        "git": git_info(repo_root),
        "environment": environment(),
        "argv": portable_argv(sys.argv),
        "config": json.loads(json.dumps(dict(config), default=str)),
        "seed": int(seed),
    }
