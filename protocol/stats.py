"""Statistics over runs: a table of run records, mean ± std, the significance test for a record, and the verdict
between two sets of runs.

    from protocol import stats
    df = stats.runs_table([read_record(d) for d in run_dirs])
    s = stats.summarize(df, metric="core", target=0.256525, higher_is_better=True)
    print(stats.format_summary(s)); stats.to_csv(df, "runs.csv"); stats.to_json(s, "summary.json")
    v = stats.verdict(a, b, kind="time_to_target", higher_is_better=True)   # two RunValues: is B better than A?

The rule (style habit 7): a result beats the target only if a one-sided one-sample t-test over its
seeds rejects "the mean metric does not beat the target" at p < RECORD_P_VALUE. H1 is mean > target
for a higher-is-better metric (CORE) and mean < target for a lower-is-better one (val bpb). CORE moves
by ~0.016 across seeds of one command, so a single lucky seed is not a record.

Which runs count: every registered run does. A run with a status other than COUNTED_STATUSES (failed,
diverged, killed, invalid, stopped, never run), or whose metric is missing or not finite (a NaN loss, a
run killed before its eval), is a miss: left out of the mean and the test, listed under `excluded`
with its reason, counted in `n_missed`, and a set with a miss does not meet the record rule (no seed
can be dropped to improve the set). A seed that appears twice counts once (two runs of one seed are
one sample, not two: their zero variance would fake significance).

Degenerate cases, decided here rather than left to scipy's NaNs and warnings:
  - no runs left: every statistic is None, p_value None;
  - n = 1: mean/min/max of that run, std None, p_value None (a t-test needs at least 2 runs);
  - zero variance (all runs equal): t is ±inf or undefined, so p_value = 0.0 if every run beats the
    target (strictly) and 1.0 otherwise.
`p_value_reason` says which case applied (None for an ordinary t-test).

`summarize` takes the table `runs_table` makes from run records, or plain rows with the same column
names (the leaderboard passes its verified, recomputed values that way).
"""

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from protocol.record import RunRecord

RECORD_P_VALUE = 0.01  # a record needs p < 0.01
COUNTED_STATUSES = ("completed",)  # protocol.record.STATUSES that count; a row with no status counts too
COLUMNS = ("run_id", "submission", "track", "seed", "status", "official", "train_time_s", "wall_time_s", "val_bpb",
           "core", "target_met", "energy_kwh", "cost_usd", "git_commit")  # fmt: skip


# ------------------------------------------------------------------ records -> table


def runs_table(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per run record, the COLUMNS (NaN where a run has no value)."""
    rows = []
    for r in records:
        timing, result, telemetry = r.timing, r.result, r.telemetry
        git = r.provenance.git if r.provenance else None
        rows.append(
            {
                "run_id": r.run_id,
                "submission": r.submission.name,
                "track": r.track.name,
                "seed": r.seed,
                "status": r.status,
                "official": r.official,
                "train_time_s": timing.train_time_s if timing else None,
                "wall_time_s": timing.wall_time_s if timing else None,
                "val_bpb": result.val_bpb if result else None,
                "core": result.core if result else None,
                "target_met": result.target_met if result else None,
                "energy_kwh": telemetry.energy_kwh if telemetry else None,
                "cost_usd": telemetry.cost if telemetry else None,
                "git_commit": git.commit if git else None,
            }
        )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in ("seed", "train_time_s", "wall_time_s", "val_bpb", "core", "energy_kwh", "cost_usd"):
        df[column] = pd.to_numeric(df[column], errors="coerce").astype(float)
    return df


# ------------------------------------------------------------------ the summary and the test


def _stat(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize(
    runs: Iterable[Mapping] | pd.DataFrame,
    *,
    metric: str,
    target: float,
    higher_is_better: bool,
    time_key: str = "train_time_s",
) -> dict:
    """n, mean ± std (ddof=1), min/max of time and metric, and the one-sided t-test against the target.

    See the module docstring for which runs are excluded and how n < 2 and zero variance are decided.
    """
    df = runs if isinstance(runs, pd.DataFrame) else pd.DataFrame(list(runs))
    if metric not in df:
        raise KeyError(f"no column {metric!r} in the runs: have {', '.join(map(str, df.columns))}")
    values = pd.to_numeric(df[metric], errors="coerce").astype(float)
    status = df["status"] if "status" in df else pd.Series([None] * len(df), index=df.index)
    run_ids = df["run_id"] if "run_id" in df else pd.Series(df.index, index=df.index)
    seeds = df["seed"] if "seed" in df else pd.Series([math.nan] * len(df), index=df.index)
    keep, excluded, seen_seeds, missed = [], [], set(), 0
    for i in df.index:
        seed = seeds[i]
        if not pd.isna(seed) and seed in seen_seeds:
            reason = f"seed {int(seed)} is already counted: each seed counts once"
        elif isinstance(status[i], str) and status[i] not in COUNTED_STATUSES:
            reason, missed = f"status {status[i]}: a miss", missed + 1
        elif not math.isfinite(values[i]):
            why = "metric missing" if math.isnan(values[i]) else f"metric {values[i]}"
            reason, missed = f"{why}: a miss", missed + 1
        else:
            keep.append(i)
            if not pd.isna(seed):
                seen_seeds.add(seed)
            continue
        excluded.append({"run_id": None if pd.isna(run_ids[i]) else str(run_ids[i]), "reason": reason})

    x = values[keep].to_numpy()
    n = len(x)
    alternative = "greater" if higher_is_better else "less"
    summary = {
        "metric": metric,
        "target": float(target),
        "higher_is_better": bool(higher_is_better),
        "alternative": alternative,
        "n": n,
        "n_total": len(df),
        "n_excluded": len(excluded),
        "n_missed": missed,
        "excluded": excluded,
        "metric_mean": _stat(x.mean()) if n else None,
        "metric_std": _stat(x.std(ddof=1)) if n >= 2 else None,
        "metric_min": _stat(x.min()) if n else None,
        "metric_max": _stat(x.max()) if n else None,
        **_time_stats(df, keep, time_key),
        "t_statistic": None,
        "p_value": None,
        "p_value_reason": None,
        "record_p_value": RECORD_P_VALUE,
    }
    beats = x > target if higher_is_better else x < target
    if n == 0:
        summary["p_value_reason"] = "no valid runs"
    elif n == 1:
        summary["p_value_reason"] = "n=1: a t-test needs at least 2 runs"
    elif np.all(x == x[0]):
        summary["p_value"] = 0.0 if beats.all() else 1.0
        which = "every run beats" if beats.all() else "not every run beats"
        summary["p_value_reason"] = f"zero variance: {which} the target"
    else:
        test = sps.ttest_1samp(x, target, alternative=alternative)
        summary["t_statistic"], summary["p_value"] = float(test.statistic), float(test.pvalue)
    # Every registered seed counts: a set with a miss is not a record, however good the rest.
    summary["meets_record"] = summary["p_value"] is not None and summary["p_value"] < RECORD_P_VALUE and not missed
    return summary


def _time_stats(df: pd.DataFrame, keep: list, time_key: str) -> dict:
    t = (
        pd.to_numeric(df[time_key], errors="coerce").astype(float)[keep]
        if time_key in df
        else pd.Series([], dtype=float)
    )
    t = t[np.isfinite(t)].to_numpy()
    return {
        "time_key": time_key,
        "time_n": len(t),
        "time_mean_s": _stat(t.mean()) if len(t) else None,
        "time_std_s": _stat(t.std(ddof=1)) if len(t) >= 2 else None,
        "time_min_s": _stat(t.min()) if len(t) else None,
        "time_max_s": _stat(t.max()) if len(t) else None,
    }


# ------------------------------------------------------------------ two sets of runs


def compare(a: list[float], b: list[float], *, lower_is_better: bool, alpha: float = RECORD_P_VALUE) -> dict:
    """Is B better than A? Welch's t-test, the mean difference B − A with its 95% CI, and Hedges' g.

    `verdict` is "better" when the one-sided test in B's favour gives p < alpha, "worse" when the one
    against it does, else "inconclusive" (also with fewer than 2 values on a side). The CI of the
    difference uses the Welch–Satterthwaite degrees of freedom; g is Cohen's d on the pooled standard
    deviation with Hedges' small-sample correction, signed so that positive means B is better.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out = {"n_a": len(x), "n_b": len(y), "mean_a": _stat(x.mean()) if len(x) else None,
           "mean_b": _stat(y.mean()) if len(y) else None, "std_a": _stat(x.std(ddof=1)) if len(x) > 1 else None,
           "std_b": _stat(y.std(ddof=1)) if len(y) > 1 else None, "diff": None, "ci95": None, "t": None,
           "p_two_sided": None, "p_better": None, "p_worse": None, "hedges_g": None, "verdict": "inconclusive",
           "lower_is_better": lower_is_better, "alpha": alpha}  # fmt: skip
    if len(x) < 2 or len(y) < 2:
        out["reason"] = "a comparison needs at least 2 runs on each side"
        return out
    diff = float(y.mean() - x.mean())
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(va + vb)
    out["diff"] = diff
    if se == 0:  # both sides constant: the sign of the difference decides, with certainty
        better = diff < 0 if lower_is_better else diff > 0
        out.update(
            p_two_sided=0.0 if diff else 1.0,
            p_better=0.0 if better else 1.0,
            p_worse=1.0 if better or not diff else 0.0,
        )
    else:
        df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
        t = diff / se
        half = float(sps.t.ppf(0.975, df)) * se
        out.update(t=float(t), ci95=[diff - half, diff + half], p_two_sided=float(2 * sps.t.sf(abs(t), df)))
        p_lower, p_higher = float(sps.t.cdf(t, df)), float(sps.t.sf(t, df))  # H1: B's mean is lower / higher
        out["p_better"], out["p_worse"] = (p_lower, p_higher) if lower_is_better else (p_higher, p_lower)
    pooled = math.sqrt(((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2))
    if pooled > 0:
        correction = 1 - 3 / (4 * (len(x) + len(y)) - 9)
        out["hedges_g"] = (-diff if lower_is_better else diff) / pooled * correction
    if out["p_better"] < alpha:
        out["verdict"] = "better"
    elif out["p_worse"] < alpha:
        out["verdict"] = "worse"
    return out


def format_comparison(c: Mapping, what: str, unit: str = "") -> str:
    """One line: B vs A on `what`, the difference with its CI, the effect size, p and the verdict."""
    if c["diff"] is None:
        return f"  {what}: {c['verdict']} ({c.get('reason', 'no data')})"
    ci = f" [{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]" if c["ci95"] else ""
    g = f", g = {c['hedges_g']:+.2f}" if c["hedges_g"] is not None else ""
    direction = "lower" if c["lower_is_better"] else "higher"
    return (
        f"  {what}: {c['mean_a']:.4g} -> {c['mean_b']:.4g}{unit} (diff {c['diff']:+.4g}{ci}{g}); "
        f"p(better) = {c['p_better']:.3g}, p(worse) = {c['p_worse']:.3g} ({direction} is better): {c['verdict']}"
    )


DOES_NOT_QUALIFY = "does not qualify"  # a verdict: the candidate misses a time-to-target track's target


@dataclass
class RunValues:
    """One side of a verdict: what it reads of a set of runs (the runner's campaign, or a submission's counted
    runs on the board)."""

    label: str
    values: list[float]  # the metric of every counted run
    times: list[float]  # the timed seconds of every counted run that met the target
    meets_target: bool | None  # summarize's record rule over the set; None: values only (a calibrated baseline)


def verdict(a: RunValues, b: RunValues, *, kind: str, higher_is_better: bool) -> dict:
    """Is B better than A? The metric's comparison always; on a time-to-target track the times decide, once both
    sets meet the target (a set that does not has no time to the target to compare): a B that misses it "does
    not qualify" (no seeds added can make it faster to a target it does not reach), an A that misses it leaves
    the verdict inconclusive; on a budget track the metric. What `speedrun compare` and the board's compare page
    both say."""
    metric = compare(a.values, b.values, lower_is_better=not higher_is_better)
    out = {"a": a.label, "b": b.label, "metric": metric, "time": None, "verdict": metric["verdict"], "reason": None}
    if kind == "time_to_target":
        out["time"] = compare(a.times, b.times, lower_is_better=True)
        unmet = [s for s in (b, a) if s.meets_target is False]
        if unmet:
            out["verdict"] = DOES_NOT_QUALIFY if unmet[0] is b else "inconclusive"
            out["reason"] = f"{unmet[0].label} does not meet the target (p < {RECORD_P_VALUE}, no misses)"
        else:
            out["verdict"] = out["time"]["verdict"]
    return out


def format_verdict(v: Mapping, metric_name: str) -> str:
    lines = [f"{v['b']} against {v['a']}:"]
    lines.append(format_comparison(v["metric"], metric_name))
    if v["time"] is not None:
        lines.append(format_comparison(v["time"], "timed seconds", " s"))
    lines.append(f"  verdict: {v['verdict']}" + (f" ({v['reason']})" if v["reason"] else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------ export and display


def to_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    df.to_csv(path, index=False)


def to_json(summary: Mapping, path: str | os.PathLike) -> None:
    """Strict JSON (no NaN tokens): summarize already writes missing numbers as null."""
    Path(path).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _pm(mean, std, unit: str = "", digits: int = 4) -> str:
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    return text + unit


def format_summary(s: Mapping) -> str:
    """A few plain-text lines: the runs counted, time and metric as mean ± std [min, max], the verdict."""
    op = ">" if s["higher_is_better"] else "<"
    lines = [f"{s['n']} of {s['n_total']} runs counted" + (f", {s['n_excluded']} excluded:" if s["excluded"] else "")]
    lines += [f"  excluded {e['run_id'] or '?'}: {e['reason']}" for e in s["excluded"]]
    width = max(len(s["time_key"]), len(s["metric"]))
    if s["time_n"]:
        lines.append(
            f"  {s['time_key']:<{width}}  {_pm(s['time_mean_s'], s['time_std_s'], ' s', 1)}"
            f"  [{s['time_min_s']:.1f}, {s['time_max_s']:.1f}]"
        )
    if s["n"]:
        lines.append(
            f"  {s['metric']:<{width}}  {_pm(s['metric_mean'], s['metric_std'])}"
            f"  [{s['metric_min']:.4f}, {s['metric_max']:.4f}]  target {op} {s['target']}"
        )
    test = f"one-sided t-test, H1: mean {s['metric']} {op} {s['target']}"
    if s["p_value"] is None:
        lines.append(f"  p = n/a ({s['p_value_reason']}); {test}")
    else:
        t = f"t = {s['t_statistic']:.3f}, " if s["t_statistic"] is not None else ""
        why = f" ({s['p_value_reason']})" if s["p_value_reason"] else ""
        lines.append(f"  {t}p = {s['p_value']:.3g}{why}; {test}")
    if s.get("n_missed"):
        miss = "run is a miss" if s["n_missed"] == 1 else "runs are misses"
        lines.append(f"  {s['n_missed']} registered {miss} (failed, killed, diverged or never ran): every seed counts")
    verdict = "meets" if s["meets_record"] else "does not meet"
    lines.append(f"  {verdict} the record rule (p < {s['record_p_value']}, no misses)")
    return "\n".join(lines)
