"""Provenance: where a number came from, as one JSON-ready dict for every run record.

    from harness import provenance
    prov = provenance.collect(repo_root, submission="submissions/mine", data_files=shards,
                              tokenizer_dir=..., eval_bundle=..., config=asdict(config), seed=config.seed)

It holds content hashes of the frozen code (`baseline/`, `eval/`, `harness/`), the submission, the
data shards, the tokenizer and the eval bundle; the git commit and dirty flag; the software and
hardware (`environment()`); the full resolved config and the seed. Two results are comparable only
where these agree (style habit 8).

Hashes are of content, never of mtimes or absolute paths, so the same tree hashes the same on every
machine. Hashing ~170 ClimbMix shards of ~100 MB takes about a minute, so shard hashes are memoized
by (absolute path, size, mtime_ns) in a small JSON cache (`~/.cache/speedrun/hashes.json` unless
told otherwise; `data_hash` and `collect` both use it): a changed size or mtime re-hashes the
file, an unchanged one is not read again.
Nothing here raises for a missing tool (git, NVML, nvidia-smi, psutil): the field is null and a
`*_reason` says why.
"""

import dataclasses
import fnmatch
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from baseline.dataset import file_sha256

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HASH_CACHE = Path.home() / ".cache" / "speedrun" / "hashes.json"
CODE_PACKAGES = ("baseline", "eval", "harness")  # hashed as *.py trees of the repo
# Everything in a submission or tokenizer directory counts, except bytecode and hidden files.
ALL_FILES, NOT_CONTENT = ("*",), ("__pycache__", "*.pyc", ".*")
# Library versions recorded with every run (those absent are left out).
PACKAGES = ("torch", "numpy", "triton", "tiktoken", "rustbpe", "pyarrow", "safetensors", "kernels", "scipy", "pandas")


# ------------------------------------------------------------------ content hashes


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    return file_sha256(path)


def tree_hash(
    path: str | os.PathLike, *, include: tuple[str, ...] = ("*.py",), exclude: tuple[str, ...] = ("__pycache__",)
) -> str:
    """sha256 over the sorted `relative/path NUL sha256(content)` lines of a directory's files.

    A file counts if its name matches one of `include` and no component of its relative path
    matches one of `exclude` (fnmatch patterns). Relative '/'-joined paths make it the same on
    every machine; it changes when a file's content or name changes, or a file comes or goes.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the package or submission folder to hash")
    h = hashlib.sha256()
    for rel in sorted(_tree_files(root, include, exclude)):
        h.update(f"{rel}\0{file_sha256(root / rel)}\n".encode())
    return h.hexdigest()


def _tree_files(root: Path, include: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _matches(d, exclude)]  # prune, do not descend
        for name in filenames:
            if _matches(name, include) and not _matches(name, exclude):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return files


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def code_hashes(repo_root: str | os.PathLike) -> dict[str, str | None]:
    """tree_hash of each frozen package's *.py files; None for a package the repo does not have."""
    root = Path(repo_root)
    return {name: tree_hash(root / name) if (root / name).is_dir() else None for name in CODE_PACKAGES}


class HashCache:
    """File sha256 memoized by (absolute path, size, mtime_ns) in a JSON file; `path=None` keeps it in memory.

    The file is rewritten atomically (temp file + rename) so concurrent runs never read half a cache;
    an unreadable cache is treated as empty.
    """

    def __init__(self, path: str | os.PathLike | None = DEFAULT_HASH_CACHE):
        self.path = Path(path).expanduser() if path is not None else None
        self.entries: dict[str, dict] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}
        self._changed = False

    def sha256(self, path: str | os.PathLike) -> str:
        key = str(Path(path).resolve())
        st = os.stat(key)
        hit = self.entries.get(key)
        if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        digest = file_sha256(key)
        self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._changed = True
        return digest

    def save(self) -> None:
        if self.path is None or not self._changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
            self._changed = False
        except OSError:
            pass  # a read-only home only costs the next run a re-hash


def data_hash(
    files: Iterable[str | os.PathLike], *, hash_cache: HashCache | str | os.PathLike | None = DEFAULT_HASH_CACHE
) -> str:
    """`baseline.dataset.data_fingerprint` of the shards, with each file's sha256 taken through the cache.

    Same `name sha256` formula as data_fingerprint, so it equals a track's pinned content hash (a
    test checks they agree). `hash_cache`: a HashCache, a cache file (saved afterwards), or None.
    """
    cache = hash_cache if isinstance(hash_cache, HashCache) else HashCache(hash_cache)
    lines = sorted(f"{Path(f).name} {cache.sha256(f)}\n" for f in files)
    if not isinstance(hash_cache, HashCache):
        cache.save()
    return hashlib.sha256("".join(lines).encode()).hexdigest()


_data_hash = data_hash  # collect() takes a precomputed fingerprint under the name `data_hash`


def submission_info(submission: str | os.PathLike) -> dict:
    """{name, path, hash} of a submission given as `baseline`, a folder or .py file, or a name under submissions/.

    `baseline` has no code of its own (hash None: the code hashes cover it); a name that resolves to
    no file keeps hash None and says why, and the submission loader reports the error.
    """
    if str(submission) == "baseline":
        return {"name": "baseline", "path": None, "hash": None, "reason": "the frozen baseline: see code hashes"}
    from submissions.contract import SubmissionError, resolve

    try:
        name, path, _source = resolve(submission)
    except SubmissionError as e:
        return {"name": Path(str(submission)).stem, "path": None, "hash": None, "reason": str(e)}
    digest = tree_hash(path, include=ALL_FILES, exclude=NOT_CONTENT) if path.is_dir() else file_hash(path)
    return {"name": name, "path": str(path), "hash": digest, "reason": None}


def eval_bundle_hash(bundle_dir: str | os.PathLike) -> str:
    """eval.bundle.content_sha256: the files that define the CORE scores, as every CORE result records."""
    from eval.bundle import content_sha256, read_tasks

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
    import torch

    cuda = torch.cuda.is_available()
    env = {
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
        "cpu_count_physical": None,
        "cpu_count_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_bytes": None,
        "torch_num_threads": torch.get_num_threads(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpus": [_gpu(torch, i) for i in range(torch.cuda.device_count())] if cuda else [],
    }
    try:
        import psutil

        env["cpu_count_physical"] = psutil.cpu_count(logical=False)
        env["memory_total_bytes"] = psutil.virtual_memory().total
    except ImportError:
        try:
            env["memory_total_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            pass
    return env


def _gpu(torch, index: int) -> dict:
    p = torch.cuda.get_device_properties(index)
    return {"name": p.name, "memory_total_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"}


def _nccl_version() -> str | None:
    try:
        import torch

        v = torch.cuda.nccl.version()
        return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
    except Exception:  # an NCCL-less build must not stop a run
        return None


def _driver_version() -> dict:
    """{driver, driver_reason}: NVML if importable, else nvidia-smi, else null with why."""
    reasons = []
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return {"driver": v.decode() if isinstance(v, bytes) else v, "driver_reason": None}
        finally:
            pynvml.nvmlShutdown()
    except ImportError:
        reasons.append("pynvml not installed")
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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


# ------------------------------------------------------------------ all of it


def collect(
    repo_root: str | os.PathLike,
    *,
    submission: str | os.PathLike | None = None,
    data_files: Iterable[str | os.PathLike] = (),
    data_hash: str | None = None,
    tokenizer_dir: str | os.PathLike | None = None,
    eval_bundle: str | os.PathLike | None = None,
    config: Mapping | object,
    seed: int,
    hash_cache: str | os.PathLike | None = DEFAULT_HASH_CACHE,
) -> dict:
    """Everything above as one JSON-ready dict; parts not given are None.

    `submission` is what `speedrun run` was given (see submission_info). `data_hash` is the shards'
    fingerprint if the caller already has it (else it is computed through `hash_cache`; None there
    hashes every shard afresh and keeps no file). `config` is a dict or a dataclass (the full
    resolved config); values JSON cannot hold (paths, enums) are written as their str().
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a dataclass, got {type(config).__name__}")
    files = [Path(f) for f in data_files]
    data = None
    if files:
        fingerprint = data_hash or _data_hash(files, hash_cache=hash_cache)
        data = {"fingerprint": fingerprint, "num_files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return {
        "code": code_hashes(repo_root),
        "submission": submission_info(submission) if submission is not None else None,
        "data": data,
        "tokenizer": tree_hash(tokenizer_dir, include=ALL_FILES, exclude=NOT_CONTENT) if tokenizer_dir else None,
        "eval_bundle": eval_bundle_hash(eval_bundle) if eval_bundle else None,
        "git": git_info(repo_root),
        "environment": environment(),
        "argv": list(sys.argv),
        "config": json.loads(json.dumps(dict(config), default=str)),
        "seed": int(seed),
    }
