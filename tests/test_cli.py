"""The `speedrun` command line: config, tokenizer training, compare, and one-line errors."""

import json
import subprocess
import sys

from baseline.config import TrainConfig, plan_training
from baseline.tokenizer import Tokenizer
from protocol.paths import REPO
from protocol.record import Campaign, write_campaign, write_record
from tests.conftest import minimal_record
from tests.test_train import speedrun


def test_config_prints_the_plan_as_json():
    proc = speedrun("config", "--depth", 24, "--target-param-data-ratio", 8, "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    expected = plan_training(TrainConfig(depth=24, target_param_data_ratio=8)).to_dict()
    assert printed == json.loads(json.dumps(expected))
    assert printed["num_iterations"] == 5568 and printed["total_batch_size"] == 1_048_576


def test_config_table_names_the_key_numbers():
    proc = speedrun("config", "--depth", 12)
    assert proc.returncode == 0, proc.stderr
    assert "768" in proc.stdout and "2,520" in proc.stdout.replace("2520", "2,520")


def test_tokenizer_train_writes_a_loadable_tokenizer(tmp_path, pretrain_dir):
    out = tmp_path / "tok"
    proc = speedrun(
        "tokenizer", "train", "--data-dir", pretrain_dir, "--out", out,
        "--vocab-size", 300, "--max-chars", 100_000,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.bos_id == 291
    assert tok.decode(tok.encode("hello world")) == "hello world"


def test_tokenizer_train_on_a_missing_dir_is_one_line(tmp_path):
    proc = speedrun("tokenizer", "train", "--data-dir", tmp_path / "nope", "--out", tmp_path / "tok")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


# Imported by commands that run them, never by the parsers: torch.compile's machinery (through the trainer),
# the statistics, the web app and the runner cost `speedrun --help` about 4 seconds on a 2-core machine.
HEAVY_FOR_A_PARSER = ("torch._dynamo", "scipy.stats", "leaderboard.app", "harness.runner", "baseline.train")


def test_the_command_line_loads_only_what_its_parsers_need():
    probe = (
        f"import sys, speedrun; speedrun.build_parser(); print([m for m in {HEAVY_FOR_A_PARSER!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"`speedrun` imports {out.stdout.strip()} before a command runs"


def _campaign(runs_dir, submission: str, stamp: str, values: list[float], times: list[float]) -> str:
    """A finished campaign of `submission` under runs_dir: one completed record per value."""
    campaign_id = f"{stamp}-cpu-books-{submission}"
    run_ids = []
    for seed, (value, t) in enumerate(zip(values, times, strict=True)):
        run_id = f"{campaign_id}-s{seed}"
        record = minimal_record(
            run_id, seed=seed, submission={"name": submission, "hash": None},
            timing={"train_time_s": t, "steps": 40, "num_iterations": 40},
            result={"metric": "val_bpb", "value": value, "val_bpb": value, "target_met": True},
        )  # fmt: skip
        (runs_dir / run_id).mkdir(parents=True)
        write_record(runs_dir / run_id, record)
        run_ids.append(run_id)
    campaign = Campaign(campaign_id=campaign_id, created=stamp, track=record.track, submission=record.submission,
                        seeds=list(range(len(values))), run_ids=run_ids)  # fmt: skip
    write_campaign(runs_dir, campaign)
    return campaign_id


def test_compare_takes_submission_names_or_campaign_ids(tmp_path):
    old = _campaign(tmp_path, "baseline", "20261101-000000", [2.9, 2.8], [90.0, 91.0])
    new = _campaign(tmp_path, "baseline", "20261201-000000", [2.40, 2.30, 2.29], [101.0, 111.0, 137.0])
    idea = _campaign(tmp_path, "my_idea", "20261202-000000", [2.25, 2.27, 2.22], [95.0, 99.0, 97.0])
    proc = speedrun("compare", "baseline", "my_idea", "--runs-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"{idea} against {new}:"  # the newest baseline campaign, not the old one
    assert "val_bpb: 2.33 -> 2.247" in lines[1] and "timed seconds: 116.3 -> 97 s" in lines[2]
    assert lines[3].startswith("  verdict: ")
    proc = speedrun("compare", old, "my_idea", "--runs-dir", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metric"]["n_a"] == 2
    proc = speedrun("compare", "baseline", "nobody", "--runs-dir", tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "named 'nobody'" in lines[0] and "campaign id" in lines[0]
