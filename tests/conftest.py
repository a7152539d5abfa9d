"""Shared test fixtures: where the read-only reference data lives (../shared next to the repo)."""

import json
import os
from pathlib import Path

import pytest
import torch

from protocol.record import RunRecord

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPEEDRUN_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
PRETRAIN = DATA / "pretrain"
# pytest-xdist hands a worker one whole file at a time, in collection order (pyproject's --dist loadfile). The
# files of many whole runs go first, longest first, so no worker is left running one of them at the end
# while the others idle; the rest keep their order. Measured with --durations on 2 cores, 2026-12-01.
LONGEST_FILES = (
    "test_trust.py", "test_open_verification.py", "test_open_division.py", "test_harness.py", "test_cpu_speedrun.py",
    "test_train.py", "test_leaderboard_verify.py", "test_reproduction_e2e.py", "test_verdicts.py", "test_cli.py",
    "test_reproduction.py", "test_eval_core.py", "test_launchers.py",
)  # fmt: skip


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores. The suite's processes spend about a sixth of their time
    waiting on child processes, servers and sandboxes (measured: 166% of 2 cores with 2 workers)."""
    return (os.cpu_count() or 1) + 1


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


# The golden files were made with 2 torch threads; fixed threads also keep CPU kernels deterministic.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden outputs not found at {GOLDEN} (set SPEEDRUN_SHARED)")
    return GOLDEN


@pytest.fixture(scope="session")
def pretrain_dir() -> Path:
    if not PRETRAIN.is_dir():
        pytest.skip(f"pretraining shards not found at {PRETRAIN} (set SPEEDRUN_SHARED)")
    return PRETRAIN


def load_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one torch thread (and leave the other core alone); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def minimal_record(run_id: str = "run1", **fields):
    """A valid protocol.record.RunRecord with only what a test cares about set (the rest: defaults)."""
    base = {
        "run_id": run_id,
        "status": "completed",
        "created": "2026-12-01T00:00:00+00:00",
        "seed": 0,
        "submission": {"name": "baseline", "hash": None},
        "track": {"name": "cpu-books", "version": 1, "metric": "val_bpb", "threshold": 7.0, "higher_is_better": False},
    }
    return RunRecord.model_validate(base | fields)


def fake_shards(directory: Path, n: int = 3) -> list[Path]:
    """n files named like shards, of random bytes (1000, 1001, ... long): for hashing, not for reading."""
    paths = []
    for i in range(n):
        p = Path(directory) / f"shard_{i:05d}.parquet"
        p.write_bytes(os.urandom(1000 + i))
        paths.append(p)
    return paths
