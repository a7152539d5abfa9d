"""The reproduction rule: a re-run (protocol.reproduce.ReproduceResult) against its run's claim, in one place.

    verdict = compare(claim, result, rule)     # rule: the track's protocol.tracks.Reproduce
    verdict.status                             # "reproduced" | "disputed" | "error"; .reasons, .evidence, .time_ratio

"error" (the job is retried, up to Settings.max_attempts): the re-run did not finish (a sandbox limit, a
crash, a run that ended failed or invalid): it neither confirms nor refutes the claim. Otherwise every
rule below is checked, each failure is one reason, and any reason makes it "disputed":
  - it ran the submission the record names (the re-run's record carries the same submission hash);
  - it trained the claimed number of steps, and every step's training loss is within the track's
    loss_abs_tolerance of the claimed loss at that step (a step that diverged on one side only differs);
  - its final metric is within metric_abs_tolerance of the claimed one (as the verifier recomputed it);
  - its own two clocks agree (protocol.timing.clock_check), and its timed seconds fit inside the
    sandbox's outer clock, which the reproducer measured outside the submission's reach;
  - time: reproduced / claimed timed seconds is at most time_ratio_max, judged only where the
    reproducer has the run's own hardware (the same CPU model for a CPU track, the same GPUs for a GPU
    track); elsewhere it is shown, not judged. A re-run faster than the claim is never held against it.
Why these tolerances (protocol/tracks/cpu-books.toml): on CPU the same seed, library versions and thread
count reproduce a run bitwise (measured: every loss, the metric and the weights' sha256 identical, in
and out of the sandbox), so the loss and metric tolerances only absorb what another CPU's vector code
may round differently; a forged loss curve or a claim of another recipe differs by far more. Time is
what varies: honest cpu-books runs of one machine took 101-137 s (calibration), a ratio of 1.36.
The evidence keeps both sides: the loss curves (thinned to summary.MAX_POINTS), the metric, the time,
the hardware, the versions, the clocks and the weights' hashes.
"""

import math
from dataclasses import dataclass, field

from leaderboard.summary import thin
from protocol.reproduce import ReproduceResult
from protocol.tracks import Reproduce

PACKAGES_SHOWN = ("torch", "numpy", "triton")  # versions that change a run's numbers, shown side by side


@dataclass
class Claim:
    """What the run claims, as verified: the step losses of its events, the recomputed metric and seconds."""

    submission_hash: str | None
    losses: list[float | None]  # per step, in step order
    metric: str
    metric_value: float | None  # the verifier's recomputation
    train_time_s: float  # the verifier's recomputation from the step events
    weights_sha256: str | None  # of the uploaded model.safetensors (the run's last save)
    hardware_kind: str  # the track's: "cpu" or "cuda"
    cpu_model: str | None  # the run's provenance
    gpus: list[str]
    versions: dict[str, str | None]


@dataclass
class Verdict:
    status: str  # "reproduced" | "disputed" | "error"
    reasons: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    time_ratio: float | None = None


def _loss_problems(claim: Claim, result: ReproduceResult, tol: float) -> tuple[list[str], dict]:
    problems = []
    if len(result.losses) != len(claim.losses):
        problems.append(f"the re-run trained {len(result.losses)} steps, the claim {len(claim.losses)}")
    worst, worst_step, first_over = 0.0, None, None
    for step, (a, b) in enumerate(zip(claim.losses, result.losses, strict=False)):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            diff = 0.0 if a is None and b is None else math.inf
        else:
            diff = abs(a - b)
        if diff > worst:
            worst, worst_step = diff, step
        if diff > tol and first_over is None:
            first_over = step
    if first_over is not None:
        problems.append(
            f"step {first_over}'s training loss is {_num(claim.losses[first_over])} claimed, "
            f"{_num(result.losses[first_over])} reproduced (largest difference {worst:.3g} at step {worst_step}; "
            f"tolerance {tol:g})"
        )
    pairs = thin([[s, a, b] for s, (a, b) in enumerate(zip(claim.losses, result.losses, strict=False))])
    return problems, {"max_abs_diff": worst if math.isfinite(worst) else None, "at_step": worst_step,
                      "first_over": first_over, "tolerance": tol, "pairs": pairs}  # fmt: skip


def _num(v) -> str:
    return "none" if v is None else f"{v:.6f}"


def _hardware_match(claim: Claim, result: ReproduceResult) -> str | None:
    """None when the reproducer has the run's own hardware; else why the time is not judged."""
    if claim.hardware_kind == "cpu":
        if not claim.cpu_model or claim.cpu_model != result.machine.cpu_model:
            return f"the run's CPU is {claim.cpu_model or 'unknown'}, the reproducer's {result.machine.cpu_model}"
        return None
    if sorted(claim.gpus) != sorted(result.machine.gpus):
        return f"the run's GPUs are {claim.gpus or 'unknown'}, the reproducer's {result.machine.gpus or 'none'}"
    return None


def _time(claim: Claim, result: ReproduceResult, rule: Reproduce) -> tuple[list[str], dict, float | None]:
    problems, reproduced = [], result.train_time_s
    ratio = reproduced / claim.train_time_s if reproduced is not None and claim.train_time_s > 0 else None
    not_judged = _hardware_match(claim, result)
    if result.clock_ok is False:
        problems.append(f"the re-run's own clocks disagree: {result.clock_detail}")
    if reproduced is not None and reproduced > result.wall_s:
        problems.append(f"the re-run's steps claim {reproduced:.1f} s, the sandbox ran only {result.wall_s:.1f} s")
    if ratio is not None and not_judged is None and ratio > rule.time_ratio_max:
        problems.append(
            f"the re-run took {ratio:.2f}x the claimed timed seconds ({reproduced:.1f} s against "
            f"{claim.train_time_s:.1f} s) on the run's own hardware, over the track's {rule.time_ratio_max:g}x: "
            "the claimed speed is disputed"
        )
    evidence = {"claimed_s": claim.train_time_s, "reproduced_s": reproduced, "ratio": ratio,
                "max_ratio": rule.time_ratio_max, "judged": not_judged is None, "why_not_judged": not_judged,
                "sandbox_wall_s": result.wall_s, "clock_ok": result.clock_ok}  # fmt: skip
    return problems, evidence, ratio


def compare(claim: Claim, result: ReproduceResult, rule: Reproduce) -> Verdict:
    """The verdict of one re-run against its claim (see the module docstring for each rule)."""
    if result.status != "ok" or result.run_status not in ("completed", "diverged"):
        why = result.reason or result.run_error or f"the re-run ended {result.run_status or 'without a record'}"
        tail = " | ".join(result.log_tail[-3:])
        return Verdict("error", [f"the submission did not finish in the sandbox ({result.status}): {why}"
                                 + (f" [{tail}]" if tail else "")])  # fmt: skip
    reasons = []
    if result.submission_hash != claim.submission_hash:
        reasons.append(f"the re-run's record names submission hash {str(result.submission_hash)[:12]}…, the claim "
                       f"{str(claim.submission_hash)[:12]}…")  # fmt: skip
    if result.run_status == "diverged":
        reasons.append("the re-run diverged; the claimed run completed")
    if result.run_error and result.run_status == "completed":  # the harness left unreadable files: tampered with
        reasons.append(f"the re-run's files could not be read back: {result.run_error}")
    loss_problems, losses = _loss_problems(claim, result, rule.loss_abs_tolerance)
    reasons += loss_problems
    value = result.metric_value
    diff = abs(value - claim.metric_value) if value is not None and claim.metric_value is not None else None
    if diff is None or diff > rule.metric_abs_tolerance:
        reasons.append(f"the final {claim.metric} is {_num(claim.metric_value)} claimed, {_num(value)} reproduced "
                       f"(tolerance {rule.metric_abs_tolerance:g})")  # fmt: skip
    time_problems, time, ratio = _time(claim, result, rule)
    reasons += time_problems
    env = result.environment
    evidence = {
        "losses": losses,
        "metric": {"name": claim.metric, "claimed": claim.metric_value, "reproduced": value, "abs_diff": diff,
                   "tolerance": rule.metric_abs_tolerance},  # fmt: skip
        "time": time,
        "steps": {"claimed": len(claim.losses), "reproduced": result.steps},
        "hardware": {"claimed": claim.cpu_model if claim.hardware_kind == "cpu" else claim.gpus,
                     "reproducer": result.machine.model_dump()},  # fmt: skip
        "versions": {"claimed": claim.versions,
                     "reproduced": {"torch": env.torch if env else None, "python": env.python if env else None}
                     | {p: (env.packages.get(p) if env else None) for p in PACKAGES_SHOWN}},  # fmt: skip
        "weights": {"claimed_sha256": claim.weights_sha256, "reproduced_sha256": result.weights_sha256,
                    "identical": claim.weights_sha256 is not None and claim.weights_sha256 == result.weights_sha256},
        "submission_hash": {"claimed": claim.submission_hash, "reproduced": result.submission_hash},
    }  # fmt: skip
    return Verdict("disputed" if reasons else "reproduced", reasons, evidence, ratio)
