"""harness.provenance: what a record says a number came from: hashes, git, environment (hashing: test_hashing)."""

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import provenance
from protocol.hashing import data_fingerprint, file_sha256, folder_or_file_hash, tree_hash
from protocol.record import Provenance
from tests.conftest import fake_shards

REPO = Path(__file__).resolve().parents[1]


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
    data_dir: Path = Path("data")


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
    files = fake_shards(tmp_path, 2)

    prov = provenance.collect(
        submission_dir=sub, data_files=files, tokenizer_dir=tok, eval_bundle=bundle, config=_Config(), seed=7
    )
    assert prov == json.loads(json.dumps(prov))  # JSON-ready as it is
    Provenance.model_validate(prov)  # and it fits the record's schema
    assert prov["code"]["baseline"] == tree_hash(REPO / "baseline")
    assert prov["submission"] == {
        "name": "submission",
        "hash": tree_hash(sub),
        "division": "closed",
    }  # a name and a hash, no path
    assert prov["tokenizer"] == tree_hash(tok, include=("*",))
    assert prov["data"] == {"fingerprint": data_fingerprint(files), "num_files": 2, "bytes": 2001}
    given = provenance.collect(data_files=files, data_hash="f" * 64, config={}, seed=0)
    assert given["data"]["fingerprint"] == "f" * 64  # the runner's fingerprint is not recomputed
    assert len(prov["eval_bundle"]) == 64
    assert prov["config"] == {"depth": 4, "data_dir": "data"} and prov["seed"] == 7
    assert set(prov) >= {"git", "environment"}
    bare = provenance.collect(config={"depth": 4}, seed=0)
    assert (bare["submission"], bare["data"], bare["tokenizer"], bare["eval_bundle"]) == (None,) * 4
    with pytest.raises(TypeError, match="config must be"):
        provenance.collect(config=[1], seed=0)


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


def test_submission_ref_names_and_hashes_what_was_run(tmp_path):
    folder = REPO / "submissions" / "cosine_schedule"
    assert provenance.submission_ref(folder) == {
        "name": "cosine_schedule",
        "hash": folder_or_file_hash(folder),
        "division": "closed",
    }
    single = tmp_path / "fast_muon.py"
    single.write_text("x = 1\n")
    assert provenance.submission_ref(single) == {"name": "fast_muon", "hash": file_sha256(single), "division": "closed"}


def test_shards_hash_goes_through_the_machines_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    files = fake_shards(tmp_path, 2)
    assert provenance.shards_hash(files) == data_fingerprint(files)
    assert len(json.loads((tmp_path / "cache" / "hashes.json").read_text())) == 2
