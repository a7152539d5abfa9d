"""The server's own copies of what a track's runs are checked against: data, tokenizer, eval bundle, code.

    facts = server_facts(track_row, settings)     # checks.ServerFacts for the verifier; the chat uses its tokenizer

Each comes from Settings.track_resources when the admin set it, else from where this machine keeps a
track's files (protocol/paths.py: the track's default data dir, the tokenizer `speedrun run` trained
and cached for that data). A resource the server does not have is None, and the checks that need it
report "error" (retried later) rather than pass. The held-out shards (the track's
dataset.heldout_shards, only the server holds them) are looked for in TrackResources.heldout_dir,
else the data dir; their fingerprint must equal the track's dataset.heldout_hash.
"""

from functools import lru_cache
from pathlib import Path

from baseline.dataset import list_shards
from leaderboard.checks import ServerFacts
from leaderboard.models import TrackRow
from leaderboard.settings import Settings, TrackResources
from protocol.hashing import ALL_FILES, NOT_CONTENT, HashCache, code_hashes, data_fingerprint, tree_hash
from protocol.paths import hash_cache_file, track_data_dir, track_tokenizer_dir
from protocol.tracks import track_from_dict


@lru_cache(maxsize=64)
def _tokenizer_hash(path: str) -> str:
    return tree_hash(path, include=ALL_FILES, exclude=NOT_CONTENT)


@lru_cache(maxsize=4)
def _server_code_hashes(repo_root: str) -> dict:
    return code_hashes(repo_root)


def _existing(path: Path | None) -> Path | None:
    return path if path is not None and Path(path).is_dir() else None


def server_facts(row: TrackRow, settings: Settings) -> ServerFacts:
    """The server's own copies of what a run of `row`'s track must match (see Settings.track_resources)."""
    res = settings.track_resources.get(row.name) or TrackResources()
    track = track_from_dict(row.spec)
    data_dir = _existing(res.data_dir) or (_existing(track_data_dir(track)) if track.dataset.default_dir else None)
    data_hash = row.data_hash or (_data_hash(data_dir, track.dataset.shards) if data_dir else None)
    tokenizer_dir = _existing(res.tokenizer_dir) or (
        _existing(track_tokenizer_dir(track, data_hash)) if data_hash else None
    )
    heldout_files, heldout_error = _heldout(track.dataset, res.heldout_dir or data_dir)
    return ServerFacts(
        code_hashes=_server_code_hashes(str(settings.repo_root)),
        frozen_packages=tuple(settings.frozen_packages),
        tokenizer_dir=tokenizer_dir,
        tokenizer_hash=_tokenizer_hash(str(tokenizer_dir)) if tokenizer_dir else None,
        data_dir=data_dir,
        data_hash=data_hash,
        eval_bundle=res.eval_bundle,
        eval_tokens=track.target.eval_tokens,
        budget_s=track.target.budget_s or 0.0,
        core_max_per_task=track.target.core_max_per_task,
        device=settings.verify_device,
        bpb_abs_tolerance=settings.bpb_abs_tolerance,
        core_abs_tolerance=settings.core_abs_tolerance,
        time_rel_tolerance=settings.time_rel_tolerance,
        time_abs_tolerance_s=settings.time_abs_tolerance_s,
        heldout_files=heldout_files,
        heldout_error=heldout_error,
        heldout_gap_bpb=settings.heldout_gap_bpb if res.heldout_gap_bpb is None else res.heldout_gap_bpb,
    )


def _heldout(dataset, directory: Path | None) -> tuple[tuple[Path, ...], str | None]:
    """(the server's held-out shards, why not): the pinned names, found and fingerprinted as pinned."""
    names = dataset.heldout_shards
    if not names:
        return (), None
    files = tuple(Path(directory) / n for n in names) if directory else ()
    if not files or not all(f.is_file() for f in files):
        return (), "the server lacks the track's held-out shards (set track_resources.heldout_dir)"
    found = data_fingerprint(files, cache=HashCache(hash_cache_file()))
    if found != dataset.heldout_hash:
        return (), "the server's held-out shards do not have the fingerprint the track pins: fix the server's copy"
    return files, None


def _data_hash(data_dir: Path, shards: tuple[str, ...]) -> str | None:
    files = list_shards(data_dir)
    if shards:
        files = [f for f in files if f.name in set(shards)]
    return data_fingerprint(files, cache=HashCache(hash_cache_file())) if files else None
