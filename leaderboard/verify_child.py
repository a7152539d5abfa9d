"""The verification child: every check of one stored bundle, its verdict printed as JSON on stdout.

    python -m leaderboard.verify_child < job.json        # what leaderboard/isolation.py starts, under limits

job:    {"record": {...}, "track": {...} (the TrackRow's fields), "spec": {...} (protocol.tracks.Track.to_dict()),
         "bundle_dir": "...", "facts": "..." (checks.ServerFacts.to_json()), "telemetry_info": {...} | null}
answer: {"results": [{"name", "outcome", "detail", "evidence"}, ...], "recomputed": {"train_time_s", "val_bpb", ...}}

It reads the bundle (validated at upload), builds the model and evaluates it: the work a hostile bundle
could make expensive, kept in a process the worker can lose. A check that raises becomes an "error"
(the server's fault, retried) or a "fail" (the bundle's), never a crash without an answer.
"""

import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

from leaderboard import checks
from leaderboard.check_timing import check_train_time
from leaderboard.members import parse_events
from leaderboard.redact import redact
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
    timing, train_time_s = check_train_time(record, parse_events(bundle_dir / "events.jsonl"), facts)
    results.append(timing)
    recomputed = {"train_time_s": train_time_s}
    weights, model_config = checks.check_weights(bundle_dir, spec)
    results.append(weights)
    if model_config is None:
        results.append(checks.CheckResult("metric", "skip", "not recomputed: the weights could not be read safely"))
        return results, recomputed
    try:
        metric_results, values = checks.check_metric(record, bundle_dir, track, facts)
        results += metric_results
        recomputed |= values
    except MemoryError:
        why = "the model needs more memory than the server's verification limit (Settings.verify_memory_bytes)"
        results.append(checks.CheckResult("metric", "error", why))
    except ValueError as e:  # the bundle's fault: corrupt tensors, a vocab that does not fit the tokenizer
        results.append(checks.CheckResult("metric", "fail", f"the model could not be evaluated: {redact(str(e))}"))
    except Exception as e:  # noqa: BLE001 -- the server's fault (missing files, a bug): an error, retried
        trace = redact(traceback.format_exc(limit=5))
        results.append(checks.CheckResult("metric", "error", redact(f"{type(e).__name__}: {e}"), {"traceback": trace}))
    return results, recomputed


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    results, recomputed = run_checks(job)
    answer = {"results": [r.__dict__ for r in results], "recomputed": recomputed}
    sys.stdout.write(json.dumps(answer, default=str))


if __name__ == "__main__":
    main()
