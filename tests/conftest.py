"""Shared test fixtures: where the read-only reference data lives (../shared next to the repo)."""

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("SPEEDRUN_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
PRETRAIN = DATA / "pretrain"

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
