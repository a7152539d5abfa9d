"""harness.provenance: content hashes follow content (not mtimes or places), the hash cache, git, environment."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from baseline.dataset import data_fingerprint
from harness import provenance

REPO = provenance.Path(__file__).resolve().parents[1]


@pytest.fixture
def baseline_copy(tmp_path):
    dest = tmp_path / "repo" / "baseline"
    shutil.copytree(REPO / "baseline", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_tree_hash_changes_when_one_byte_of_baseline_changes(baseline_copy):
    before = provenance.tree_hash(baseline_copy)
    assert before == provenance.tree_hash(REPO / "baseline")  # same content elsewhere: same hash
    gpt = baseline_copy / "gpt.py"
    data = bytearray(gpt.read_bytes())
    data[-1] ^= 1
    gpt.write_bytes(bytes(data))
    assert provenance.tree_hash(baseline_copy) != before


def test_tree_hash_ignores_mtime_and_bytecode_but_not_names(baseline_copy):
    before = provenance.tree_hash(baseline_copy)
    os.utime(baseline_copy / "gpt.py", (1_000_000, 1_000_000))
    (baseline_copy / "__pycache__").mkdir(exist_ok=True)
    (baseline_copy / "__pycache__" / "gpt.cpython-311.pyc").write_bytes(b"\0junk")
    (baseline_copy / "notes.txt").write_text("not *.py")
    assert provenance.tree_hash(baseline_copy) == before
    (baseline_copy / "gpt.py").rename(baseline_copy / "gpt2.py")
    assert provenance.tree_hash(baseline_copy) != before
    (baseline_copy / "gpt2.py").rename(baseline_copy / "gpt.py")
    (baseline_copy / "extra.py").write_text("")  # a new (even empty) file counts
    assert provenance.tree_hash(baseline_copy) != before


def test_tree_hash_is_the_documented_formula(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.py").write_bytes(b"b")
    (tmp_path / "sub" / "a.py").write_bytes(b"a")
    h = hashlib.sha256()
    for rel, content in sorted([("b.py", b"b"), ("sub/a.py", b"a")]):
        h.update(f"{rel}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    assert provenance.tree_hash(tmp_path) == h.hexdigest()
    assert provenance.file_hash(tmp_path / "b.py") == hashlib.sha256(b"b").hexdigest()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        provenance.tree_hash(tmp_path / "missing")


def test_code_hashes_follow_the_baseline(baseline_copy):
    root = baseline_copy.parent
    first = provenance.code_hashes(root)
    assert first["baseline"] == provenance.tree_hash(REPO / "baseline") and first["eval"] is None
    (baseline_copy / "train.py").write_text((baseline_copy / "train.py").read_text() + "\n# changed\n")
    assert provenance.code_hashes(root)["baseline"] != first["baseline"]


def _shards(tmp_path, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"shard_{i:05d}.parquet"
        p.write_bytes(os.urandom(1000 + i))
        paths.append(p)
    return paths


def test_data_hash_agrees_with_data_fingerprint(tmp_path):
    files = _shards(tmp_path)
    assert provenance.data_hash(files, hash_cache=None) == data_fingerprint(files)


def test_hash_cache_does_not_reread_unchanged_files(tmp_path, monkeypatch):
    files = _shards(tmp_path)
    reads = []
    real = provenance.file_sha256
    shard_names = {f.name for f in files}

    def counting_sha256(path):  # code trees are hashed through file_sha256 too: count only shard reads
        if provenance.Path(path).name in shard_names:
            reads.append(path)
        return real(path)

    monkeypatch.setattr(provenance, "file_sha256", counting_sha256)
    cache_file = tmp_path / "cache" / "hashes.json"

    provenance.data_hash(files, hash_cache=provenance.HashCache(cache_file))  # a HashCache instance: not saved
    assert len(reads) == 3 and not cache_file.exists()
    first = provenance.data_hash(files, hash_cache=cache_file)
    assert len(reads) == 6 and len(json.loads(cache_file.read_text())) == 3
    reads.clear()
    second = provenance.collect(REPO, data_files=files, config={}, seed=0, hash_cache=cache_file)
    assert reads == [] and second["data"]["fingerprint"] == first  # from the cache file, not the shards
    assert provenance.data_hash(files, hash_cache=cache_file) == first and reads == []

    files[1].write_bytes(os.urandom(1001))  # same size, new content and mtime
    os.utime(files[1], ns=(1, 1))
    third = provenance.collect(REPO, data_files=files, config={}, seed=0, hash_cache=cache_file)
    assert [p.name for p in map(provenance.Path, reads)] == [files[1].name]
    assert third["data"]["fingerprint"] == data_fingerprint(files) != first


def test_hash_cache_survives_a_corrupt_file(tmp_path):
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{not json")
    (f,) = _shards(tmp_path, 1)
    cache = provenance.HashCache(cache_file)
    assert cache.sha256(f) == provenance.file_hash(f)
    cache.save()
    assert str(f.resolve()) in json.loads(cache_file.read_text())


def _git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_info_clean_dirty_and_outside_a_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repo above tmp_path
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-q", "-m", "one")
    clean = provenance.git_info(repo)
    assert clean["dirty"] is False and clean["branch"] == "main" and clean["reason"] is None
    assert len(clean["commit"]) == 40 and int(clean["commit"], 16) >= 0

    (repo / "a.py").write_text("x = 2\n")
    assert provenance.git_info(repo) | {"dirty": False} == clean and provenance.git_info(repo)["dirty"] is True
    _git(repo, "checkout", "-q", "a.py")
    (repo / "new.py").write_text("")
    assert provenance.git_info(repo)["dirty"] is True  # an untracked submission file is a change too

    outside = tmp_path / "plain"
    outside.mkdir()
    info = provenance.git_info(outside)
    assert (info["commit"], info["dirty"], info["branch"]) == (None, None, None)
    assert "not a git repository" in info["reason"]


def test_git_info_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert provenance.git_info(tmp_path) == {
        "commit": None,
        "dirty": None,
        "branch": None,
        "reason": "git is not installed",
    }


def test_environment_has_versions_and_hardware():
    import torch

    env = provenance.environment()
    for key in (
        "python",
        "torch",
        "cuda",
        "cudnn",
        "nccl",
        "driver",
        "driver_reason",
        "packages",
        "platform",
        "hostname",
        "cpu_model",
        "cpu_count_logical",
        "cpu_count_physical",
        "memory_total_bytes",
        "torch_num_threads",
        "gpu_count",
        "gpus",
    ):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["packages"]["torch"].split("+")[0] in torch.__version__
    assert env["cpu_count_logical"] >= 1 and env["memory_total_bytes"] > 0
    assert env["gpu_count"] == len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert (env["driver"] is None) == (env["driver_reason"] is not None)
    json.dumps(env)


@dataclasses.dataclass
class _Config:
    depth: int = 4
    data_dir: provenance.Path = provenance.Path("/data")


def test_collect_is_one_json_ready_dict(tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    (sub / "submission.py").write_text("def configure(c): return c\n")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    bundle = tmp_path / "bundle"
    (bundle / "eval_data").mkdir(parents=True)
    (bundle / "core.yaml").write_text(
        "icl_tasks:\n  - label: copa\n    dataset_uri: copa.jsonl\n    num_fewshot: [0]\n"
        "    icl_task_type: multiple_choice\n"
    )
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\ncopa,50.0\n")
    (bundle / "eval_data" / "copa.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n')
    files = _shards(tmp_path, 2)

    prov = provenance.collect(
        REPO,
        submission=sub,
        data_files=files,
        tokenizer_dir=tok,
        eval_bundle=bundle,
        config=_Config(),
        seed=7,
        hash_cache=None,
    )
    assert prov == json.loads(json.dumps(prov))  # JSON-ready as it is
    assert prov["code"]["baseline"] == provenance.tree_hash(REPO / "baseline")
    assert prov["submission"] == {
        "name": "submission",
        "path": str(sub),
        "hash": provenance.tree_hash(sub),
        "reason": None,
    }
    assert prov["tokenizer"] == provenance.tree_hash(tok, include=("*",))
    assert prov["data"] == {"fingerprint": data_fingerprint(files), "num_files": 2, "bytes": 2001}
    given = provenance.collect(REPO, data_files=files, data_hash="f" * 64, config={}, seed=0, hash_cache=None)
    assert given["data"]["fingerprint"] == "f" * 64  # the runner's fingerprint is not recomputed
    assert len(prov["eval_bundle"]) == 64
    assert prov["config"] == {"depth": 4, "data_dir": "/data"} and prov["seed"] == 7
    assert set(prov) >= {"git", "environment"}
    bare = provenance.collect(REPO, config={"depth": 4}, seed=0, hash_cache=None)
    assert (bare["submission"], bare["data"], bare["tokenizer"], bare["eval_bundle"]) == (None,) * 4
    with pytest.raises(TypeError, match="config must be"):
        provenance.collect(REPO, config=[1], seed=0, hash_cache=None)


def test_environment_reports_gpus_when_cuda_is_there(monkeypatch):
    """The CUDA branch, faked on CPU: names, memory, capability, NCCL and cuDNN versions."""
    import types

    import torch

    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 27, 3))
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    env = provenance.environment()
    assert env["gpu_count"] == 2 and env["nccl"] == "2.27.3" and env["cudnn"] == 91002
    assert env["gpus"][1] == {"name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85 * 2**30, "capability": "9.0"}


def test_submission_info_names_and_hashes_what_was_run(tmp_path):
    assert provenance.submission_info("baseline")["hash"] is None
    folder = REPO / "submissions" / "cosine_schedule"
    by_path = provenance.submission_info(folder)
    by_name = provenance.submission_info("cosine_schedule")
    assert (
        by_path == by_name
        and by_path["name"] == "cosine_schedule"
        and by_path["hash"]
        == provenance.tree_hash(folder, include=provenance.ALL_FILES, exclude=provenance.NOT_CONTENT)
    )
    single = tmp_path / "fast_muon.py"
    single.write_text("x = 1\n")
    assert provenance.submission_info(single)["hash"] == provenance.file_hash(single)
    missing = provenance.submission_info("nope")
    assert missing["hash"] is None and "not found" in missing["reason"]
