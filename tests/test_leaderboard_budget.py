"""Fixed-budget tracks on the board: ranked by mean metric, and a new best needs a Welch p < 0.01 over the holder.

The standings are computed from verified rows put straight into a migrated SQLite database (the rule in
leaderboard/ranking.py is what is tested; the upload and verify path is the same for every track kind).
"""

import pytest
from sqlmodel import Session, select

from leaderboard import crud, ranking
from leaderboard.db import get_engine, migrate
from leaderboard.models import RecordEntry, Run, Submission, Submitter, TrackRow, Verification
from protocol.tracks import load_track


@pytest.fixture
def session(tmp_path):
    url = f"sqlite:///{tmp_path / 'board.db'}"
    migrate(url)
    with Session(get_engine(url)) as s:
        crud.sync_tracks(s, specs=[load_track("cpu-5min")])
        s.commit()
        yield s


def add_runs(session: Session, name: str, bpbs: list[float], seconds: float = 300.5) -> int:
    track = session.exec(select(TrackRow).where(TrackRow.name == "cpu-5min")).one()
    who = Submitter(name=f"{name}-author")
    session.add(who)
    session.flush()
    sub = Submission(name=name, submitter_id=who.id)
    session.add(sub)
    session.flush()
    for seed, bpb in enumerate(bpbs):
        run = Run(
            run_id=f"{name}-s{seed}", seed=seed, status="completed", bundle_sha256="0" * 64, track_id=track.id,
            submission_id=sub.id, submitter_id=who.id, track_version=track.version,
        )  # fmt: skip
        session.add(run)
        session.flush()
        session.add(
            Verification(
                run_pk=run.id, status="verified", recomputed_val_bpb=bpb, recomputed_train_time_s=seconds + seed / 10
            )
        )
    session.commit()
    ranking.update_standing(session, track=track, submission_id=sub.id)
    return sub.id


def board(session: Session) -> list[tuple[str, int | None]]:
    track = session.exec(select(TrackRow).where(TrackRow.name == "cpu-5min")).one()
    return [(s.submission, s.rank) for s in ranking.leaderboard(session, track=track)]


def holders(session: Session) -> list[int]:
    return [e.submission_id for e in session.exec(select(RecordEntry).order_by(RecordEntry.id)).all()]


def test_budget_tracks_rank_by_mean_metric_and_a_new_best_needs_welch(session):
    baseline = load_track("cpu-5min").target.threshold
    a = add_runs(session, "a", [baseline - 0.05 + d for d in (0.001, -0.002, 0.0, 0.002, -0.001)])
    assert holders(session) == [a]  # beats the calibrated baseline: the first best
    # A lower mean, but within noise of a's: ranked above a, yet not a new best.
    add_runs(session, "b", [baseline - 0.0505 + d for d in (0.004, -0.004, 0.003, -0.003, 0.0)])
    assert board(session)[:2] == [("b", 1), ("a", 2)]
    assert holders(session) == [a]
    # Clearly lower than a's runs: the new best.
    c = add_runs(session, "c", [baseline - 0.08 + d for d in (0.001, -0.001, 0.002, -0.002, 0.0)])
    assert holders(session) == [a, c]
    assert board(session)[0] == ("c", 1)


def test_a_budget_submission_no_better_than_the_baseline_does_not_rank(session):
    baseline = load_track("cpu-5min").target.threshold
    add_runs(session, "same", [baseline + d for d in (0.01, -0.01, 0.005, -0.005, 0.0)])
    assert board(session) == [("same", None)]
    assert holders(session) == []
