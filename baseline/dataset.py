"""Pretraining shards: listing, train/val split, reading and downloading (content hashes: protocol/hashing.py).

A data directory holds nanochat's parquet shards `shard_{i:05d}.parquet` (one string column
`text`). Files are taken in name order and the **last file is the validation split**, all the
others the train split (nanochat/dataset.py, dataloader.py), unless the directory holds a
`splits.json` ({"train": [names], "val": [names]}) that says which files are which: the runner
builds such views of a track's data (links to the files of one split only), so that the training
process is never handed the val shard. The real corpus is ClimbMix,
repacked by Karpathy as the HF dataset `karpathy/climbmix-400b-shuffle` (shards 0..6542);
`download_shards` fetches any subset of it plus the val shard 6542, resumably and verified:

    speedrun data download --num-shards 170 --data-dir DIR
"""

import json
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from baseline.download import transfer, with_retries
from protocol.hashing import file_sha256

BASE_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
NUM_SHARDS = 6543
VAL_SHARD = NUM_SHARDS - 1  # the last shard of the corpus is its val split, as in nanochat
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SPLITS_FILE = "splits.json"  # a data view's own statement of its splits


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def list_shards(data_dir: str | os.PathLike) -> list[Path]:
    """All parquet shards of `data_dir`, sorted by name."""
    data_dir = Path(data_dir)
    files = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no parquet shards in {data_dir}: download with `speedrun data download` or pass --data-dir"
        )
    return files


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split: as the directory's splits.json says, else 'val' is the last file, 'train' the rest."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")
    declared = Path(data_dir) / SPLITS_FILE
    if declared.is_file():
        names = json.loads(declared.read_text()).get(split) or []
        if not names:
            raise ValueError(f"{data_dir} is a data view without a {split} split: this process is not given one")
        return [Path(data_dir) / name for name in names]
    files = list_shards(data_dir)
    if len(files) < 2:
        raise ValueError(
            f"only {len(files)} parquet shard in {data_dir}: need at least 2 (the last one is the val "
            "split); download more with `speedrun data download`"
        )
    return files[-1:] if split == "val" else files[:-1]


class Shard:
    """One parquet shard, read row group by row group; a damaged file fails naming itself."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._file = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise ValueError(f"cannot read shard {self.path}: {e}; delete it and download it again") from e
        if "text" not in self._file.schema_arrow.names:
            raise ValueError(f"shard {self.path} has no 'text' column: not a pretraining shard")
        self.num_row_groups = self._file.num_row_groups

    def texts(self, rg_idx: int) -> list[str]:
        try:
            return self._file.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist()
        except Exception as e:
            raise ValueError(
                f"cannot read row group {rg_idx} of shard {self.path}: {e}; delete it and download it again"
            ) from e


def read_manifest(data_dir: str | os.PathLike) -> dict[str, dict]:
    """`{shard name: {"size", "sha256"}}` recorded in the data dir's manifest ({} if none)."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text()).get("shards", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} is not a JSON object: fix or delete it") from e


def _record_in_manifest(data_dir: Path, name: str, size: int, sha256: str) -> None:
    # Other keys of an existing manifest (e.g. provenance of a hand-made corpus) are kept.
    path = data_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("shards", {})[name] = {"size": size, "sha256": sha256}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _Downloader:
    """Fetches shards into one directory; safe to call from several threads."""

    def __init__(self, data_dir: Path, base_url: str, retries: int, backoff_s: float, timeout_s: float, bar):
        self.data_dir, self.base_url = data_dir, base_url.rstrip("/")
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.bar = bar
        self.expected = read_manifest(data_dir)
        self.lock = threading.Lock()
        self.sized: set[str] = set()

    def fetch(self, index: int) -> Path:
        name = shard_name(index)
        dest = self.data_dir / name
        expected_sha = self.expected.get(name, {}).get("sha256")
        if dest.exists():
            sha = file_sha256(dest)
            if expected_sha in (None, sha):
                self._record(name, dest.stat().st_size, sha)
                return dest
            dest.unlink()  # a stale or damaged copy: fetch it again
        tmp = dest.with_name(name + ".tmp")

        def attempt() -> Path:
            sized = lambda total, offset: self._sized(name, total, offset)  # noqa: E731
            size = transfer(f"{self.base_url}/{name}", tmp, self.timeout_s, sized, self._advance)
            sha = file_sha256(tmp)
            if expected_sha not in (None, sha):
                tmp.unlink()
                raise ValueError(f"sha256 of {name} is {sha}, {MANIFEST} says {expected_sha}")
            os.replace(tmp, dest)
            self._record(name, size, sha)
            return dest

        fix = f"check the network and run again (partial downloads resume), or fix {self.data_dir / MANIFEST}"
        return with_retries(
            attempt, what=f"download of {name}", fix=fix, retries=self.retries, backoff_s=self.backoff_s
        )

    def _sized(self, name: str, total: int | None, offset: int) -> None:
        with self.lock:  # the bar counts the bytes still to fetch, each file's once (not again on a retry)
            if total is not None and name not in self.sized:
                self.sized.add(name)
                self.bar.total = (self.bar.total or 0) + total - offset
                self.bar.refresh()

    def _advance(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def _record(self, name: str, size: int, sha256: str) -> None:
        with self.lock:
            _record_in_manifest(self.data_dir, name, size, sha256)


def download_shards(
    indices: Iterable[int],
    data_dir: str | os.PathLike,
    *,
    base_url: str = BASE_URL,
    workers: int = 4,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download the given shards and always the val shard 6542 into `data_dir`; return their paths.

    Each file goes to `NAME.tmp` first and is renamed once complete, so an interrupted run leaves
    no truncated shard; the next run continues the `.tmp` with a Range request. The size is
    checked against Content-Length; the sha256 of every shard is recorded in `manifest.json`,
    and if the manifest already names a sha256 for a shard the file must match it.
    """
    wanted = sorted(set(indices) | {VAL_SHARD})
    bad = [i for i in wanted if not 0 <= i < NUM_SHARDS]
    if bad:
        raise ValueError(f"shard indices {bad} out of range: ClimbMix has shards 0..{NUM_SHARDS - 1}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(unit="B", unit_scale=True, desc="shards", disable=not progress) as bar:
        downloader = _Downloader(data_dir, base_url, retries, backoff_s, timeout_s, bar)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(downloader.fetch, wanted))


def write_view(view_dir: str | os.PathLike, splits: dict[str, list[Path]]) -> Path:
    """A data view: `view_dir` holding links to the given files and a splits.json naming them per split."""
    view_dir = Path(view_dir)
    view_dir.mkdir(parents=True, exist_ok=True)
    for files in splits.values():
        for f in files:
            link = view_dir / f.name
            if not link.is_symlink():
                link.symlink_to(Path(f).resolve())
    names = {split: [f.name for f in files] for split, files in splits.items()}
    (view_dir / SPLITS_FILE).write_text(json.dumps(names, indent=1) + "\n")
    return view_dir
