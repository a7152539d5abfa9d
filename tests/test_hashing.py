"""protocol.hashing: content hashes follow content (not mtimes or places), and the hash cache never re-reads."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from protocol import hashing
from protocol.hashing import HashCache, code_hashes, data_fingerprint, file_sha256, folder_or_file_hash, tree_hash
from tests.conftest import fake_shards

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def baseline_copy(tmp_path):
    dest = tmp_path / "repo" / "baseline"
    shutil.copytree(REPO / "baseline", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_tree_hash_changes_when_one_byte_of_baseline_changes(baseline_copy):
    before = tree_hash(baseline_copy)
    assert before == tree_hash(REPO / "baseline")  # same content elsewhere: same hash
    gpt = baseline_copy / "gpt.py"
    data = bytearray(gpt.read_bytes())
    data[-1] ^= 1
    gpt.write_bytes(bytes(data))
    assert tree_hash(baseline_copy) != before


def test_tree_hash_ignores_mtime_and_bytecode_but_not_names(baseline_copy):
    before = tree_hash(baseline_copy)
    os.utime(baseline_copy / "gpt.py", (1_000_000, 1_000_000))
    (baseline_copy / "__pycache__").mkdir(exist_ok=True)
    (baseline_copy / "__pycache__" / "gpt.cpython-311.pyc").write_bytes(b"\0junk")
    (baseline_copy / "notes.txt").write_text("not *.py")
    assert tree_hash(baseline_copy) == before
    (baseline_copy / "gpt.py").rename(baseline_copy / "gpt2.py")
    assert tree_hash(baseline_copy) != before
    (baseline_copy / "gpt2.py").rename(baseline_copy / "gpt.py")
    (baseline_copy / "extra.py").write_text("")  # a new (even empty) file counts
    assert tree_hash(baseline_copy) != before


def test_tree_hash_is_the_documented_formula(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.py").write_bytes(b"b")
    (tmp_path / "sub" / "a.py").write_bytes(b"a")
    h = hashlib.sha256()
    for rel, content in sorted([("b.py", b"b"), ("sub/a.py", b"a")]):
        h.update(f"{rel}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    assert tree_hash(tmp_path) == h.hexdigest()
    assert file_sha256(tmp_path / "b.py") == hashlib.sha256(b"b").hexdigest()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        tree_hash(tmp_path / "missing")


def test_a_submission_hash_covers_every_file_but_bytecode(tmp_path):
    folder = tmp_path / "idea"
    folder.mkdir()
    (folder / "submission.py").write_text("x = 1\n")
    first = folder_or_file_hash(folder)
    (folder / "README.md").write_text("claims")  # not *.py, still the submission's
    assert folder_or_file_hash(folder) != first
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert folder_or_file_hash(folder) == tree_hash(folder, include=hashing.ALL_FILES, exclude=hashing.NOT_CONTENT)
    assert folder_or_file_hash(folder / "submission.py") == file_sha256(folder / "submission.py")


def test_code_hashes_follow_the_baseline(baseline_copy):
    root = baseline_copy.parent
    first = code_hashes(root)
    assert first["baseline"] == tree_hash(REPO / "baseline") and first["eval"] is None
    assert set(first) == set(hashing.CODE_PACKAGES)
    (baseline_copy / "train.py").write_text((baseline_copy / "train.py").read_text() + "\n# changed\n")
    assert code_hashes(root)["baseline"] != first["baseline"]


def test_fingerprint_is_order_free_and_follows_content(pretrain_dir, tmp_path):
    path = pretrain_dir / "shard_00003.parquet"
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(pretrain_dir.glob("*.parquet"))[:-1]
    assert data_fingerprint(files) == data_fingerprint(reversed(files))
    copy = tmp_path / "shard_00003.parquet"
    copy.write_bytes(path.read_bytes() + b"\0")
    assert data_fingerprint(files[:-1] + [copy]) != data_fingerprint(files)


def test_hash_cache_does_not_reread_unchanged_files(tmp_path, monkeypatch):
    files = fake_shards(tmp_path)
    reads = []
    real = hashing.file_sha256

    def counting_sha256(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(hashing, "file_sha256", counting_sha256)
    cache_file = tmp_path / "cache" / "hashes.json"
    plain = data_fingerprint(files)  # no cache: every file read
    assert len(reads) == 3 and not cache_file.exists()
    first = data_fingerprint(files, cache=HashCache(cache_file))
    assert first == plain and len(reads) == 6 and len(json.loads(cache_file.read_text())) == 3
    reads.clear()
    assert data_fingerprint(files, cache=HashCache(cache_file)) == first and reads == []  # from the cache file

    files[1].write_bytes(os.urandom(1001))  # same size, new content and mtime
    os.utime(files[1], ns=(1, 1))
    third = data_fingerprint(files, cache=HashCache(cache_file))
    assert reads == [files[1].name] and third != first


def test_hash_cache_survives_a_corrupt_file(tmp_path):
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{not json")
    (f,) = fake_shards(tmp_path, 1)
    cache = HashCache(cache_file)
    assert cache.sha256(f) == file_sha256(f)
    cache.save()
    assert str(f.resolve()) in json.loads(cache_file.read_text())
