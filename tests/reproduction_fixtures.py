"""Bundles that carry their submission's source, and a server whose test track re-runs submissions.

paths = with_source(golden_bundles["r0"], tmp)       # + source.tar, the record's submission hash set to it
env = reproducing_env(tmp, by="runners")              # the golden track with a [reproduce] table
"""

import json
from pathlib import Path

from fastapi.testclient import TestClient

from leaderboard.app import create_app
from leaderboard.settings import Settings, TrackResources
from leaderboard.tokens import create_token
from protocol.hashing import folder_or_file_hash
from protocol.source import SOURCE_FILE, pack_source
from tests import leaderboard_fixtures as fixtures
from tests.test_leaderboard_api import Env

SUBMISSION = "golden-sub"


def reproduce_table(by: str, *, time_ratio_max: float = 1.5, wall_s: float = 900.0) -> str:
    return (
        f'\n[reproduce]\nby = "{by}"\nruns_per_submission = 1\nloss_abs_tolerance = 0.001\n'
        f"metric_abs_tolerance = 0.001\ntime_ratio_max = {time_ratio_max}\nwall_s = {wall_s}\n"
    )


def submission_folder(directory: Path, name: str = SUBMISSION) -> Path:
    folder = Path(directory) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission.py").write_text('METADATA = {"authors": ["test"], "description": "the baseline"}\n')
    (folder / "README.md").write_text(f"# {name}\n")
    return folder


def with_source(paths: dict[str, Path], directory: Path, source: bytes | None = None) -> dict[str, Path]:
    """A copy of a golden bundle with source.tar (`source`, or a packed submission folder) and the record's
    submission hash set to the folder's, as `speedrun run` records it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    folder = submission_folder(directory / "src")
    record = json.loads(paths["record.json"].read_text())
    for ref in (record["submission"], record["provenance"]["submission"]):
        ref["hash"] = folder_or_file_hash(folder)
    out = dict(paths)
    out["record.json"] = directory / "record.json"
    out["record.json"].write_text(json.dumps(record))
    out[SOURCE_FILE] = directory / SOURCE_FILE
    out[SOURCE_FILE].write_bytes(pack_source(folder) if source is None else source)
    return out


def reproducing_env(directory: Path, *, by: str = "runners", database_url: str | None = None, **overrides) -> Env:
    """The golden track with a [reproduce] table (SQLite unless `database_url`), with an admin, alice and bob."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    track_file = fixtures.golden_track_file(directory)
    track_file.write_text(track_file.read_text() + reproduce_table(by))
    settings = Settings(
        database_url=database_url or f"sqlite:///{directory / 'lb.db'}",
        storage_dir=directory / "storage",
        track_files=[track_file],
        track_resources={
            fixtures.TRACK: TrackResources(data_dir=fixtures.PRETRAIN, tokenizer_dir=fixtures.GOLDEN_TOKENIZER)
        },
        **{"cache_ttl_s": 0.0, **overrides},
    )
    client = TestClient(create_app(settings))
    admin = create_token("admin", True, settings=settings)
    return Env(
        client, settings, admin, create_token("alice", settings=settings), create_token("bob", settings=settings)
    )
