"""The metric of an open-division run: its model, the submission's own code, run only in the sandbox.

    results, recomputed = open_metric.check(record, bundle_dir, facts, work_dir=..., limits=..., tick=...)

The verification child checks everything else of an open run (leaderboard/verify_child.py); it never
imports the submission, and neither does the worker that calls this. Here the bundle's source.tar is
unpacked with protocol.source.check_source (every member safe, the files' hash the record's), and
eval.open_scoring.score_in_sandbox runs the model in a bubblewrap sandbox over the server's val (and
held-out) batches: the model returns logits and nothing else, and this process computes val bpb, the
held-out bpb and the order and causality checks from them (leaderboard/checks.judge_open_score compares
them with the claims). A model that breaks a rule (logits of the wrong shape or dtype, weights its own
code does not load, a peek at later tokens, a different answer the second time, a crash, a fork bomb or a
disk hog) is rejected with one line; the server's own limits (memory, wall clock) are errors, retried.

Without a usable sandbox an open run is not verified at all: its metric is an "error" naming the fix,
the job stays pending and is retried (then "error", for an admin): the server never imports its code to
score it some other way. work_dir (storage_dir/open-eval/<bundle sha256>/) keeps the source it ran and
each pass's log.txt until the next attempt, for an admin to read.
"""

import shutil
import tempfile
from pathlib import Path

import sandbox
from baseline.dataset import write_view
from eval.open_scoring import score_in_sandbox
from leaderboard.checks import CheckResult, ServerFacts, judge_open_score
from protocol.record import RunRecord
from protocol.source import SOURCE_FILE, SourceError, check_source

WORK_DIR = "open-eval"  # under Settings.storage_dir


def unavailable() -> str | None:
    """None when open runs can be scored here; else one line saying why, with the fix."""
    why = sandbox.available()
    return f"an open run's model runs only in the sandbox, which cannot start here: {why}" if why else None


def check(
    record: RunRecord,
    bundle_dir: Path,
    facts: ServerFacts,
    *,
    work_dir: Path,
    limits: sandbox.Limits,
    threads: int,
    tick=lambda: True,
) -> tuple[list[CheckResult], dict]:
    """The metric and held-out results of an open run, and the recomputed values (see the docstring)."""
    why = unavailable()
    if why:
        return [CheckResult("metric", "error", why)], {}
    if facts.tokenizer_dir is None or facts.data_dir is None:
        why = "the server has no tokenizer or val data for this track (set track_resources)"
        return [CheckResult("metric", "error", why)], {}
    shutil.rmtree(work_dir, ignore_errors=True)  # an earlier attempt's
    work_dir.mkdir(parents=True)
    ref = record.submission
    try:
        source = check_source(
            (bundle_dir / SOURCE_FILE).read_bytes(), work_dir / "source", name=ref.name, expected=ref.hash
        )
    except (SourceError, FileNotFoundError) as e:
        return [CheckResult("metric", "fail", f"the model's code could not be read: {e}")], {}
    batch_size = (record.config or {}).get("device_batch_size") or 32  # bounded at upload (uploads.MAX_EVAL_BATCH)
    try:
        with tempfile.TemporaryDirectory(prefix="heldout-") as tmp:
            heldout = write_view(tmp, {"val": list(facts.heldout_files)}) if facts.heldout_files else None
            scored = score_in_sandbox(
                source=source, checkpoint=bundle_dir, tokenizer_dir=facts.tokenizer_dir, val_dir=facts.data_dir,
                tokens=facts.eval_tokens, batch_size=batch_size, work_dir=work_dir, heldout_dir=heldout,
                threads=threads, limits=limits, tick=tick,
            )  # fmt: skip
    except RuntimeError as e:  # the sandbox's limits or a cancel: the server's side, retried
        return [CheckResult("metric", "error", str(e))], {}
    return judge_open_score(record, scored, facts)
