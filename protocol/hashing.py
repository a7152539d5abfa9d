"""Content hashes: of one file, of a directory tree, and of a set of data shards.

    from protocol.hashing import file_sha256, tree_hash, data_fingerprint
    file_sha256("model.safetensors")                        # sha256 of the bytes
    tree_hash("submissions/mine", include=ALL_FILES)         # a folder's files, by relative path
    data_fingerprint(shards, cache=HashCache(hash_cache_file()))   # the pinned hash of a track's data

Hashes are of content and relative names, never of mtimes or absolute paths, so the same tree hashes
the same on every machine. Hashing ~170 ClimbMix shards of ~100 MB takes about a minute, so a
HashCache memoizes each file's sha256 by (path, size, mtime_ns) in a small JSON file: a changed size
or mtime re-hashes the file, an unchanged one is not read again.
"""

import fnmatch
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

CHUNK_BYTES = 1 << 20
REPO = Path(__file__).resolve().parents[1]
# The frozen code every record carries the hashes of (as *.py trees of the repo).
CODE_PACKAGES = ("protocol", "baseline", "eval", "harness")
# Everything in a submission or tokenizer directory counts, except bytecode and hidden files.
ALL_FILES, NOT_CONTENT = ("*",), ("__pycache__", "*.pyc", ".*")


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_hash(
    path: str | os.PathLike, *, include: tuple[str, ...] = ("*.py",), exclude: tuple[str, ...] = ("__pycache__",)
) -> str:
    """sha256 over the sorted `relative/path NUL sha256(content)` lines of a directory's files.

    A file counts if its name matches one of `include` and no component of its relative path matches
    one of `exclude` (fnmatch patterns). It changes when a file's content or name changes, or a file
    comes or goes.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory: pass the package or submission folder to hash")
    h = hashlib.sha256()
    for rel in sorted(tree_files(root, include=include, exclude=exclude)):
        h.update(f"{rel}\0{file_sha256(root / rel)}\n".encode())
    return h.hexdigest()


def code_hashes(repo_root: str | os.PathLike = REPO) -> dict[str, str | None]:
    """tree_hash of each frozen package's *.py files; None for a package the repo does not have."""
    root = Path(repo_root)
    return {name: tree_hash(root / name) if (root / name).is_dir() else None for name in CODE_PACKAGES}


def folder_or_file_hash(path: str | os.PathLike) -> str:
    """A submission's hash: tree_hash of its folder (every file but bytecode and hidden ones), or of one file."""
    path = Path(path)
    return tree_hash(path, include=ALL_FILES, exclude=NOT_CONTENT) if path.is_dir() else file_sha256(path)


def tree_files(root: Path, *, include: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """The relative paths (posix) of the files tree_hash covers, in walk order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _matches(d, exclude)]  # prune, do not descend
        for name in filenames:
            if _matches(name, include) and not _matches(name, exclude):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return files


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class HashCache:
    """File sha256 memoized by (absolute path, size, mtime_ns) in a JSON file; `path=None` keeps it in memory.

    The file is rewritten atomically (temp file + rename) so concurrent runs never read half a cache; an
    unreadable cache is treated as empty. The cache file is local to one machine and never leaves it.
    """

    def __init__(self, path: str | os.PathLike | None):
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
            pass  # a read-only cache dir only costs the next run a re-hash


def data_fingerprint(files: Iterable[str | os.PathLike], *, cache: HashCache | None = None) -> str:
    """sha256 over the sorted `name sha256` lines of the files: the content of a set of shards.

    Names are part of it because the split and the stream order follow the names. With `cache`, each
    file's sha256 is taken through it (and the cache saved).
    """
    cache = cache or HashCache(None)
    lines = sorted(f"{Path(p).name} {cache.sha256(p)}\n" for p in files)
    cache.save()
    return hashlib.sha256("".join(lines).encode()).hexdigest()
