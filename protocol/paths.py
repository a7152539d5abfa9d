"""Where things live on one machine: the cache root, and a track's data and tokenizer.

    SPEEDRUN_CACHE=/scratch/speedrun speedrun run baseline --track cpu-books

Every cache (downloaded shards, trained tokenizers, the CORE eval bundle, file hashes, compile caches,
the local leaderboard's storage) lives under one root: $SPEEDRUN_CACHE, else $XDG_CACHE_HOME/speedrun,
else ~/.cache/speedrun. Nothing here is ever written into a record, a checkpoint or the database: those
hold content hashes and paths relative to a run directory, so they mean the same on every machine.
"""

import os
from pathlib import Path

from protocol.hashing import ALL_FILES, NOT_CONTENT, tree_hash

REPO = Path(__file__).resolve().parents[1]  # the processes run here; a default data dir is relative to it


def cache_root() -> Path:
    if os.environ.get("SPEEDRUN_CACHE"):
        return Path(os.environ["SPEEDRUN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "speedrun"


def hash_cache_file() -> Path:
    return cache_root() / "hashes.json"


def eval_bundle_dir() -> Path:
    return cache_root() / "eval_bundle"


def compile_cache_dir() -> Path:
    """torch.compile's on-disk caches (Inductor, Triton), shared by the warm-up and the timed process."""
    return cache_root() / "compile"


def passed_checks_dir() -> Path:
    """Submissions that passed their conformance check, one small JSON file per (code, submission) key."""
    return cache_root() / "passed-checks"


def leaderboard_dir() -> Path:
    """The local leaderboard's database and uploaded bundles, unless the service is told otherwise."""
    return cache_root() / "leaderboard"


def track_data_dir(track, given: str | os.PathLike | None = None) -> Path:
    """The shards of `track`: `given` (--data-dir), else the track's repo-relative default, else the cache."""
    if given is not None:
        return Path(given)
    if track.dataset.default_dir:
        return (REPO / track.dataset.default_dir).resolve()
    return cache_root() / "data" / track.dataset.source


def track_tokenizer_dir(track, data_hash: str) -> Path:
    """The tokenizer trained for `track` on the data with fingerprint `data_hash` (made once, then reused)."""
    return cache_root() / "tokenizers" / f"{track.name}-v{track.tokenizer.vocab_size}-{data_hash[:12]}"


def find_tokenizer(content_hash: str) -> Path | None:
    """The cached tokenizer directory whose content hash is `content_hash` (what checkpoints record), or None."""
    root = cache_root() / "tokenizers"
    for candidate in sorted(root.iterdir()) if root.is_dir() else []:
        if (candidate / "tokenizer.json").is_file() and tree_hash(
            candidate, include=ALL_FILES, exclude=NOT_CONTENT
        ) == content_hash:
            return candidate
    return None
