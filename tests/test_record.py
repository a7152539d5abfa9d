"""protocol.record: run.json and record.json are typed, versioned, strict, and old records still load."""

import json

import pytest

from protocol.record import (
    RunSpec,
    find_run,
    parse_record,
    read_record,
    read_spec,
    write_record,
    write_spec,
)
from tests.conftest import minimal_record

# A schema-1 record as the 2026-11 runner wrote it (abridged to what differs from version 2).
V1 = {
    "schema_version": 1,
    "run_id": "20261126-095550-cpu-books-baseline-s42",
    "status": "completed",
    "official": True,
    "unofficial_reasons": [],
    "created": "2026-11-26T09:55:50+00:00",
    "finished": "2026-11-26T09:58:39+00:00",
    "command": ["speedrun", "run", "baseline"],
    "seed": 42,
    "nproc": 1,
    "resumed": 0,
    "submission": {"name": "baseline", "path": None, "hash": None, "reason": "the frozen baseline: see code hashes"},
    "track": {"name": "cpu-books", "version": 1, "metric": "val_bpb", "threshold": 2.631, "higher_is_better": False},
    "config": {"depth": 4, "seed": 42},
    "plan": {"num_iterations": 40},
    "timing": {
        "train_time_s": 100.9,
        "warmup_time_s": 30.0,
        "setup_time_s": 2.0,
        "eval_time_s": 5.0,
        "checkpoint_time_s": 0.2,
        "wall_time_s": 140.0,
        "steps": 40,
        "num_iterations": 40,
    },  # fmt: skip
    "result": {"metric": "val_bpb", "value": 2.4029, "val_bpb": 2.4029, "core": None, "target_met": True},
    "throughput": {"tokens_per_s": 3000.0, "mfu": 0.1},
    "telemetry": None,
    "provenance": {
        "code": {"baseline": "0" * 64},
        "submission": {"name": "baseline", "path": "/somewhere", "hash": None, "reason": "x"},
        "seed": 42,
    },  # fmt: skip
    "files": {"events": "events.jsonl", "telemetry": "telemetry.jsonl", "log": "train.log", "checkpoint": None},
    "error": None,
}


def test_a_record_round_trips_through_its_file(tmp_path):
    record = minimal_record("r1", result={"metric": "val_bpb", "value": 2.5, "val_bpb": 2.5, "target_met": True})
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    write_record(run_dir, record)
    assert read_record(run_dir) == record
    assert find_run("r1", tmp_path) == find_run(run_dir) == run_dir  # by run id under runs_dir, or by path
    assert json.loads((run_dir / "record.json").read_text())["schema_version"] == 2
    assert not list(run_dir.glob("*.tmp"))  # written atomically


def test_a_schema_1_record_still_loads_without_its_machine_paths():
    record = parse_record(json.loads(json.dumps(V1)))
    assert record.schema_version == 2 and record.result.val_bpb == 2.4029 and record.timing.steps == 40
    assert record.submission.model_dump() == {"name": "baseline", "hash": None, "division": "closed"}
    assert "/somewhere" not in record.model_dump_json()


@pytest.mark.parametrize(
    "change,where",
    [
        ({"schema_version": 7}, "schema version 7"),
        ({"surprise": 1}, "at surprise"),  # unknown keys are refused, not kept
        ({"seed": 10**30}, "at seed"),
        ({"status": "great"}, "at status"),
        ({"run_id": "../../etc"}, "at run_id"),
        ({"throughput": {"tokens_per_s": "fast", "mfu": 1.0}}, "at throughput.tokens_per_s"),
        ({"timing": {"train_time_s": -1.0, "steps": 1, "num_iterations": 1}}, "at timing.train_time_s"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_in_one_line(change, where):
    raw = minimal_record().model_dump(mode="json") | change
    with pytest.raises(ValueError, match=where) as excinfo:
        parse_record(raw, where="record.json")
    assert "\n" not in str(excinfo.value)


def test_a_damaged_record_file_says_so(tmp_path):
    (tmp_path / "record.json").write_text("{half")
    with pytest.raises(ValueError, match="is not JSON"):
        read_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="speedrun run"):
        read_record(tmp_path / "nowhere")


def test_a_spec_names_paths_relative_to_its_run_directory(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    spec = RunSpec(submission="../../sub", config={"depth": 4}, data_dir="../../data", val_dir="data/val",
                   tokenizer_dir="tok", device="cpu")  # fmt: skip
    write_spec(run_dir, spec)
    back = read_spec(run_dir)
    assert back == spec and back.path(run_dir, "data_dir") == (tmp_path / "data").resolve()
    (run_dir / "run.json").write_text(json.dumps(spec.model_dump() | {"device": "tpu"}))
    with pytest.raises(ValueError, match="RunSpec schema at device"):
        read_spec(run_dir)
