"""protocol.stats: the record t-test against a hand computation and scipy, exclusions, degenerate cases, export."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import special
from scipy import stats as sps

from protocol import stats
from protocol.record import RunRecord

CORE_TARGET, BPB_TARGET = 0.256525, 0.80


def _hand_p(x, target, higher_is_better):
    """t = (mean - target) / (s / sqrt(n)) with s the sample std; p from the Student-t CDF (stdtr)."""
    n = len(x)
    mean = sum(x) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    t = (mean - target) / (s / math.sqrt(n))
    p = special.stdtr(n - 1, -t) if higher_is_better else special.stdtr(n - 1, t)  # P(T >= t) / P(T <= t)
    return t, p


def _runs(metric, values, times=None):
    times = times or [100.0 + i for i in range(len(values))]
    return [
        {"run_id": f"r{i}", "status": "completed", "train_time_s": t, metric: v}
        for i, (v, t) in enumerate(zip(values, times, strict=True))
    ]


@pytest.mark.parametrize(
    "metric,values,target,higher",
    [
        ("core", [0.262, 0.259, 0.266, 0.261, 0.258], CORE_TARGET, True),
        ("core", [0.257, 0.250, 0.262], CORE_TARGET, True),
        ("val_bpb", [0.7951, 0.7962, 0.7940, 0.7958], BPB_TARGET, False),
        ("val_bpb", [0.801, 0.799, 0.803], BPB_TARGET, False),
    ],
)
def test_p_value_equals_hand_computation_and_scipy(metric, values, target, higher):
    s = stats.summarize(_runs(metric, values), metric=metric, target=target, higher_is_better=higher)
    t, p = _hand_p(values, target, higher)
    ref = sps.ttest_1samp(values, target, alternative="greater" if higher else "less")
    assert s["t_statistic"] == pytest.approx(t, rel=1e-12)
    assert s["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert s["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    assert s["p_value_reason"] is None
    assert s["meets_record"] == (p < stats.RECORD_P_VALUE)
    assert s["n"] == len(values)
    assert s["metric_mean"] == pytest.approx(np.mean(values))
    assert s["metric_std"] == pytest.approx(np.std(values, ddof=1))
    assert (s["metric_min"], s["metric_max"]) == (min(values), max(values))


def test_direction_follows_higher_is_better():
    # Mean 0.79 sits under a 0.80 target: beats it for bpb (lower is better), fails it for CORE-like metrics.
    values = [0.789, 0.790, 0.791, 0.790]
    lower = stats.summarize(_runs("m", values), metric="m", target=0.80, higher_is_better=False)
    higher = stats.summarize(_runs("m", values), metric="m", target=0.80, higher_is_better=True)
    assert lower["alternative"] == "less" and lower["p_value"] < 1e-4 and lower["meets_record"]
    assert higher["alternative"] == "greater" and higher["p_value"] > 0.999 and not higher["meets_record"]
    assert lower["p_value"] + higher["p_value"] == pytest.approx(1.0)


def test_record_needs_p_below_one_percent():
    assert stats.RECORD_P_VALUE == 0.01
    # A mean above target but within noise (CORE ~0.016 across seeds) is no record.
    s = stats.summarize(_runs("core", [0.27, 0.25, 0.265]), metric="core", target=CORE_TARGET, higher_is_better=True)
    assert 0.01 < s["p_value"] < 0.5 and not s["meets_record"]


def test_single_run_has_no_p_value():
    s = stats.summarize(_runs("core", [0.30]), metric="core", target=CORE_TARGET, higher_is_better=True)
    assert s["n"] == 1 and s["p_value"] is None and "at least 2" in s["p_value_reason"]
    assert s["metric_mean"] == 0.30 and s["metric_std"] is None and s["time_std_s"] is None
    assert not s["meets_record"]


def test_zero_variance_is_decided_by_whether_every_run_beats_the_target():
    beat = stats.summarize(_runs("core", [0.30] * 3), metric="core", target=CORE_TARGET, higher_is_better=True)
    assert beat["p_value"] == 0.0 and beat["meets_record"] and "every run beats" in beat["p_value_reason"]
    miss = stats.summarize(_runs("core", [0.20] * 3), metric="core", target=CORE_TARGET, higher_is_better=True)
    assert miss["p_value"] == 1.0 and not miss["meets_record"] and "not every" in miss["p_value_reason"]
    tie = stats.summarize(_runs("core", [CORE_TARGET] * 3), metric="core", target=CORE_TARGET, higher_is_better=True)
    assert tie["p_value"] == 1.0  # equal is not better


def test_no_valid_runs():
    runs = [{"run_id": "a", "status": "failed", "core": None}]
    s = stats.summarize(runs, metric="core", target=CORE_TARGET, higher_is_better=True)
    assert s["n"] == 0 and s["metric_mean"] is None and s["p_value"] is None and s["p_value_reason"] == "no valid runs"
    assert "0 of 1 runs" in stats.format_summary(s)


def test_failed_and_nan_runs_are_excluded_and_counted():
    good = [0.7951, 0.7962, 0.7940, 0.7958]
    runs = _runs("val_bpb", good) + [
        {"run_id": "diverged", "status": "diverged", "train_time_s": 50.0, "val_bpb": 3.2},
        {"run_id": "nan", "status": "completed", "train_time_s": 10.0, "val_bpb": float("nan")},
        {"run_id": "inf", "status": "completed", "train_time_s": 10.0, "val_bpb": float("inf")},
        {"run_id": "killed", "status": "killed", "train_time_s": 5.0},
        {"run_id": "no_metric", "status": "completed", "train_time_s": 10.0},
    ]
    s = stats.summarize(runs, metric="val_bpb", target=BPB_TARGET, higher_is_better=False)
    clean = stats.summarize(_runs("val_bpb", good), metric="val_bpb", target=BPB_TARGET, higher_is_better=False)
    assert (s["n"], s["n_total"], s["n_excluded"]) == (4, 9, 5)
    assert {e["run_id"]: e["reason"] for e in s["excluded"]} == {
        "diverged": "status diverged: a miss",
        "nan": "metric missing: a miss",
        "inf": "metric inf: a miss",
        "killed": "status killed: a miss",
        "no_metric": "metric missing: a miss",
    }
    assert s["n_missed"] == 5 and not s["meets_record"] and clean["meets_record"]  # every seed counts
    assert s["p_value"] == clean["p_value"] and s["time_mean_s"] == clean["time_mean_s"] == 101.5
    assert s["time_n"] == 4
    text = stats.format_summary(s)
    assert "4 of 9 runs counted, 5 excluded" in text and "excluded diverged: status diverged" in text


def _record(run_id, status, core, train_time_s):
    """A record as the runner writes it after a run (protocol.record.RunRecord)."""
    timing = None
    if train_time_s is not None:
        timing = {"train_time_s": train_time_s, "wall_time_s": train_time_s + 60, "steps": 10, "num_iterations": 10}
    return RunRecord.model_validate(
        {
            "run_id": run_id,
            "status": status,
            "created": "2026-12-01T00:00:00+00:00",
            "seed": sum(map(ord, run_id)),  # distinct runs, distinct seeds
            "submission": {"name": "baseline", "hash": None},
            "track": {
                "name": "gpt2",
                "version": 1,
                "metric": "core",
                "threshold": CORE_TARGET,
                "higher_is_better": True,
            },  # fmt: skip
            "timing": timing,
            "result": {"metric": "core", "value": core, "val_bpb": 0.75, "core": core, "target_met": True},
            "telemetry": {"energy_kwh": 2.5, "cost": 24.0},
            "provenance": {"code": {}, "git": {"commit": "abc"}, "seed": 3},
        }
    )


def test_runner_records_map_to_columns_and_only_completed_runs_count():
    records = [_record("a", "completed", 0.26, 5400.0), _record("b", "completed", 0.27, 5500.0)]
    records += [_record("c", "stopped", 0.30, 100.0), _record("d", "running", None, None)]
    df = stats.runs_table(records)
    assert list(df.columns) == list(stats.COLUMNS)
    row = df.iloc[0]
    assert (row["submission"], row["track"], row["train_time_s"], row["wall_time_s"]) == (
        "baseline",
        "gpt2",
        5400,
        5460,
    )
    assert (row["core"], row["energy_kwh"], row["cost_usd"], row["git_commit"]) == (0.26, 2.5, 24.0, "abc")
    assert math.isnan(df.iloc[3]["train_time_s"])  # a run without timing: NaN, not a crash
    s = stats.summarize(df, metric="core", target=CORE_TARGET, higher_is_better=True)
    assert s["n"] == 2 and [e["reason"] for e in s["excluded"]] == ["status stopped: a miss", "status running: a miss"]
    assert s["time_mean_s"] == 5450.0


def test_unmapped_flat_fields_are_kept_for_custom_metrics():
    s = stats.summarize(
        [{"loss": 2.0, "train_time_s": 1.0}, {"loss": 2.2, "train_time_s": 1.0}],
        metric="loss",
        target=3.0,
        higher_is_better=False,
    )
    assert s["n"] == 2 and s["p_value"] == pytest.approx(sps.ttest_1samp([2.0, 2.2], 3.0, alternative="less").pvalue)
    with pytest.raises(KeyError, match="no column 'nope'"):
        stats.summarize([{"loss": 1.0}], metric="nope", target=0, higher_is_better=True)


def test_csv_and_json_round_trip(tmp_path):
    records = [_record(f"r{i}", "completed", 0.26 + i / 1000, 300.0 + i) for i in range(3)]
    records.append(_record("r3", "diverged", None, 12.0))
    df = stats.runs_table(records)
    stats.to_csv(df, tmp_path / "runs.csv")
    back = pd.read_csv(tmp_path / "runs.csv")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)

    s = stats.summarize(df, metric="core", target=0.25, higher_is_better=True)
    stats.to_json(s, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text()) == s
    assert stats.summarize(back, metric="core", target=0.25, higher_is_better=True) == s


def test_format_summary_shows_mean_std_and_verdict():
    s = stats.summarize(
        _runs("core", [0.262, 0.259, 0.266, 0.261, 0.258]), metric="core", target=CORE_TARGET, higher_is_better=True
    )
    text = stats.format_summary(s)
    assert "5 of 5 runs counted" in text
    assert f"{s['metric_mean']:.4f} ± {s['metric_std']:.4f}" in text and "102.0 ± 1.6 s" in text
    assert "H1: mean core > 0.256525" in text and f"p = {s['p_value']:.3g}" in text
    assert ("meets the record rule" in text) == s["meets_record"]


# ------------------------------------------------------------------ two sets of runs


def _welch_p(a, b):
    """Welch's t and Welch–Satterthwaite degrees of freedom by hand; the two-sided p from the Student-t CDF."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(b) - np.mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * special.stdtr(df, -abs(t))


def test_compare_gives_the_difference_and_welchs_p_by_hand():
    base, variant = [2.40, 2.30, 2.29], [2.25, 2.27, 2.22, 2.26]
    c = stats.compare(base, variant, lower_is_better=True)
    assert c["diff"] == pytest.approx(np.mean(variant) - np.mean(base))
    assert c["p_two_sided"] == pytest.approx(_welch_p(base, variant), rel=1e-9)
    assert c["p_better"] == pytest.approx(_welch_p(base, variant) / 2, rel=1e-9)  # t < 0: half the two-sided p
    assert c["mean_a"] == pytest.approx(np.mean(base)) and c["n_b"] == 4


def test_compare_has_no_verdict_below_two_runs_and_decides_constant_sides_by_their_sign():
    assert stats.compare([2.3, 2.4], [2.2], lower_is_better=True)["verdict"] == "inconclusive"
    same = stats.compare([0.2, 0.2], [0.3, 0.3], lower_is_better=False)
    assert same["verdict"] == "better" and same["p_better"] == 0.0
    assert stats.compare([0.2, 0.2], [0.2, 0.2], lower_is_better=False)["verdict"] == "inconclusive"
