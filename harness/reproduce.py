"""The re-run of a reproduction, inside the sandbox: `speedrun reproduce WORK_DIR`.

    python -m speedrun reproduce WORK_DIR      # what protocol.reproduce.rerun_command starts behind the walls

WORK_DIR holds order.json (protocol.reproduce.WorkOrder: the job, where the track's data and tokenizer
are bound read-only) and source.tar (the submission's files as uploaded). This unpacks the source
(protocol/source.py checks every member again and that it hashes to the job's submission hash), points
this run's cache at the bound tokenizer, and runs `speedrun run` on it: the same harness, track, seed,
thread count and processes (warm-up, timed training, a fresh eval process) as the submitter's run.
What it leaves in WORK_DIR/runs/reproduction-s<seed>/ is read by the reproducer outside, which trusts
none of it blindly (protocol.reproduce.collect_result).
"""

from pathlib import Path

from harness import runner
from protocol.paths import track_tokenizer_dir
from protocol.reproduce import RERUN_CAMPAIGN, read_order
from protocol.source import SOURCE_FILE, check_source
from protocol.tracks import track_from_dict


def reproduce(work_dir: Path) -> Path:
    """Re-run the work order in `work_dir`; returns the re-run's run directory."""
    work_dir = Path(work_dir)
    order = read_order(work_dir)
    job, track = order.job, track_from_dict(order.job.track)
    submission = check_source(
        (work_dir / SOURCE_FILE).read_bytes(),
        work_dir / "source",
        name=job.submission.name,
        expected=job.submission.hash,
    )
    # the tokenizer the server (or runner) keeps, where this run's cache would have trained it
    cached = track_tokenizer_dir(track, track.dataset.content_hash)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.symlink_to(Path(order.tokenizer_dir), target_is_directory=True)
    [run_dir] = runner.run(
        track,
        str(submission),
        seeds=[job.seed],
        runs_dir=work_dir / "runs",
        data_dir=Path(order.data_dir),
        nproc=job.nproc,
        campaign_id=RERUN_CAMPAIGN,
    )
    return run_dir
