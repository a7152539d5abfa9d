"""The `speedrun` command line: config, tokenizer training, and one-line errors."""

import json

from baseline.config import TrainConfig, plan_training
from baseline.tokenizer import Tokenizer
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
