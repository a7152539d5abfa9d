"""The verification child: every check of one stored bundle, its verdict printed as JSON on stdout.

    python -m leaderboard.verify_child JOB_FILE      # what leaderboard/isolation.py starts: sandboxed, or rlimited

job:    {"record": {...}, "track": {...} (the TrackRow's fields), "spec": {...} (protocol.tracks.Track.to_dict()),
         "bundle_dir": "...", "facts": "..." (checks.ServerFacts.to_json()), "telemetry_info": {...} | null}
answer: {"results": [{"name", "outcome", "detail", "evidence"}, ...], "recomputed": {"train_time_s", "val_bpb", ...}}

It reads the bundle (validated at upload), builds the model and evaluates it: the work a hostile bundle
could make expensive, kept in a process the worker can lose. An open run's model is its submission's code,
which this child never imports: it checks the rest, and the worker scores the model in the sandbox
(leaderboard/open_metric.py). A check that raises becomes an "error"
(the server's fault, retried) or a "fail" (the bundle's), never a crash without an answer.
"""

import errno
import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

from leaderboard import checks
from leaderboard.check_timing import check_train_time
from leaderboard.members import parse_events
from leaderboard.redact import redact
from protocol.hashing import file_sha256
from protocol.record import parse_record
from protocol.tracks import track_from_dict


def run_checks(job: dict) -> tuple[list[checks.CheckResult], dict]:
    """Every check of one run, in order; (results, recomputed values)."""
    record = parse_record(job["record"], where="the run's record")
    track, spec = SimpleNamespace(**job["track"]), track_from_dict(job["spec"])
    facts = checks.ServerFacts.from_json(job["facts"])
    bundle_dir = Path(job["bundle_dir"])
    results = [
        checks.check_record(record, track),
        checks.check_code(record, facts),
        checks.check_data(record, facts),
        checks.check_tokenizer(record, facts),
        checks.check_hardware(record, job.get("telemetry_info"), track),
    ]
    events = parse_events(bundle_dir / "events.jsonl")
    timing, train_time_s = check_train_time(record, events, facts, file_sha256(bundle_dir / "model.safetensors"))
    results.append(timing)
    recomputed = {"train_time_s": train_time_s}
    division = record.submission.division
    weights, model_config = checks.check_weights(bundle_dir, spec, division)
    results.append(weights)
    if model_config is None:
        results.append(checks.CheckResult("metric", "skip", "not recomputed: the weights could not be read safely"))
        return results, recomputed
    if division == "open":  # its model is its own code: the worker scores it, sandboxed (leaderboard/open_metric.py)
        return results, recomputed
    metric_results, values = _metric(record, bundle_dir, track, facts)
    return results + metric_results, recomputed | values


def out_of_memory(e: BaseException | None) -> bool:
    """Whether `e` or what caused it is the limit's doing (a MemoryError, or an mmap/alloc refused with ENOMEM),
    however a library re-raised it (baseline.checkpoint reports a failed mmap as a corrupt file)."""
    while e is not None:
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
            return True
        if "Cannot allocate memory" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _metric(record, bundle_dir: Path, track, facts) -> tuple[list[checks.CheckResult], dict]:
    """check_metric, its failures as results: the memory limit's and the server's are errors (retried, then an
    admin's), the bundle's own (a ValueError: corrupt tensors, a vocab the tokenizer lacks) fail it."""
    try:
        return checks.check_metric(record, bundle_dir, track, facts)
    except Exception as e:  # noqa: BLE001 -- every failure becomes a result; none ends the child without one
        if out_of_memory(e):
            why = "the model needs more memory than the server's verification limit (Settings.verify_memory_bytes)"
            return [checks.CheckResult("metric", "error", why)], {}
        if isinstance(e, ValueError):
            return [checks.CheckResult("metric", "fail", f"the model could not be evaluated: {redact(str(e))}")], {}
        trace = redact(traceback.format_exc(limit=5))
        why = redact(f"{type(e).__name__}: {e}")
        return [checks.CheckResult("metric", "error", why, {"traceback": trace})], {}


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_bytes())
    results, recomputed = run_checks(job)
    answer = {"results": [r.__dict__ for r in results], "recomputed": recomputed}
    sys.stdout.write(json.dumps(answer, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
