"""A run's page summary: the bounded series its charts draw, made once from the validated members at upload.

    summary = summarize(events, telemetry_info, telemetry_samples)    # JSON-able, at most MAX_POINTS per series

A run page never reads events.jsonl or telemetry.jsonl (each may be 256 MiB): it draws this summary,
stored with the run (Run.summary). Long series are thinned by keeping every k-th point and the last.
"""

from leaderboard.members import InfoLine, SampleLine
from protocol.events import Event, StepEvent, ValEvent

MAX_POINTS = 1000


def thin(points: list) -> list:
    if len(points) <= MAX_POINTS:
        return points
    k = -(-len(points) // MAX_POINTS)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def summarize(events: list[Event], info: InfoLine | None, samples: list[SampleLine]) -> dict:
    steps = [e for e in events if isinstance(e, StepEvent)]
    val = [[e.step, e.val_bpb] for e in events if isinstance(e, ValEvent) and e.val_bpb is not None]
    gpu = any(s.gpus for s in samples)
    if gpu:
        labels = ("GPU power (sum, W)", "GPU utilization (mean, %)", "GPU memory (sum, GiB)")

        def total(s: SampleLine, key: str):
            vals = [getattr(g, key) for g in s.gpus or [] if getattr(g, key) is not None]
            return sum(vals) if vals else None

        series = [
            [[s.t, total(s, "power_w")] for s in samples],
            [[s.t, (total(s, "utilization_pct") or 0) / max(len(s.gpus or []), 1)] for s in samples],
            [[s.t, (total(s, "memory_used_bytes") or 0) / 2**30] for s in samples],
        ]
    else:
        labels = ("CPU package power (RAPL, W)", "CPU utilization (%)", "process memory (RSS, GiB)")
        energy = [(s.t, s.cpu.rapl_energy_j) for s in samples if s.cpu.rapl_energy_j is not None]
        series = [
            [[tb, (eb - ea) / (tb - ta)] for (ta, ea), (tb, eb) in zip(energy, energy[1:], strict=False) if tb > ta],
            [[s.t, s.cpu.cpu_percent] for s in samples],
            [[s.t, (s.cpu.rss_bytes or 0) / 2**30] for s in samples],
        ]
    return {
        "loss": thin([[e.step, e.loss, e.smooth_loss] for e in steps]),
        "val": thin(val),
        "telemetry": {label: thin(pts) for label, pts in zip(labels, series, strict=True)},
        "n_events": len(events),
        "n_steps": len(steps),
        "n_samples": len(samples),
        "telemetry_info": info.model_dump(mode="json") if info else None,
    }
