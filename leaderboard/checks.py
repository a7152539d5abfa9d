"""The verification checks: each a function of (the stored bundle, the track, the server's own facts).

What is recomputed and what is cross-checked:
  record       the record is a completed, official run of this track's name and version
  weights      model.safetensors is safetensors (a pickle or torch.save zip is rejected unread), and its
               tensors have exactly the shapes meta.json's model_config implies
  code         the frozen packages' code hashes (Settings.frozen_packages) equal the server's own
  data         the dataset fingerprint equals the track's pinned content hash (else the server's data)
  tokenizer    the tokenizer hash equals the server's copy of the track's tokenizer
  hardware     the provenance and telemetry show the track's hardware (GPU model and count, CPU threads)
  train_time   train_time_s recomputed from the step events (Σ dt_s of steps > 10, the trainer's rule)
               equals the claim, every step is there, and each step's dt_s agrees with the wall-clock
               gap between its event and the one before (an edited dt_s leaves an unexplained gap)
  metric       val bpb (and CORE on a CORE track) recomputed with the frozen eval on the server's val
               data and tokenizer equals the claim within Settings tolerances
Outcomes: pass, fail (the run is rejected; `detail` is the reason), skip (does not apply), error (the
server could not run it: the job stays pending and is retried).
A fully consistent forgery of every file but the weights is caught only by `metric`; what the
step events claim beyond that is cross-checked, not re-measured (only rerunning could).
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from baseline.checkpoint import read_meta
from leaderboard import recompute
from protocol.events import Event, StepEvent
from protocol.hashing import file_sha256
from protocol.record import RunRecord
from protocol.timing import RULE, last_per_step, timed_seconds

# Wall-clock slack between consecutive step events beyond dt_s: the trainer only logs between steps
# (about a millisecond), so 1 s in total plus 10 ms + 5% of each step is generous, and halving
# the recorded dt_s of steps over the wall clock shows.
GAP_SLACK_S, GAP_SLACK_PER_STEP_S, GAP_SLACK_FRACTION = 1.0, 0.01, 0.05
# Recomputed bpb per (weights, meta, tokenizer, data, budget, device): the same weights uploaded as
# several runs (or re-verified) are evaluated once per worker process. A pure function of its key.
_BPB_CACHE: dict[tuple, dict] = {}


@dataclass
class CheckResult:
    name: str
    outcome: str  # pass / fail / skip / error
    detail: str
    evidence: dict = field(default_factory=dict)


@dataclass
class ServerFacts:
    """What the server itself knows about a track, to compare a run against."""

    code_hashes: dict[str, str | None]
    frozen_packages: tuple[str, ...]
    tokenizer_dir: Path | None
    tokenizer_hash: str | None
    data_dir: Path | None
    data_hash: str | None  # the track's pinned hash, else the server's own shards' fingerprint
    eval_bundle: Path | None
    eval_tokens: int  # the track's val bpb budget
    core_max_per_task: int = -1
    device: str = "cpu"
    bpb_abs_tolerance: float = 2e-3
    core_abs_tolerance: float = 2e-3
    time_rel_tolerance: float = 1e-6
    time_abs_tolerance_s: float = 1e-3


def _short(h) -> str:
    return f"{h[:12]}…" if isinstance(h, str) and len(h) > 12 else str(h)


# ------------------------------------------------------------------ record, hashes, hardware


def check_record(record: RunRecord, track) -> CheckResult:
    problems = []
    if record.status != "completed":
        problems.append(f"status is {record.status}, not completed")
    if not record.official:
        problems.append(f"the run is unofficial ({'; '.join(record.unofficial_reasons) or 'no reason given'})")
    ref = record.track
    if ref.name != track.name or ref.version != track.version:
        problems.append(f"the run is for track {ref.name} v{ref.version}, this is {track.name} v{track.version}")
    if ref.metric != track.metric:
        problems.append(f"the run's metric is {ref.metric}, track {track.name} is judged by {track.metric}")
    evidence = {"status": record.status, "official": record.official, "track": ref.model_dump()}
    if problems:
        return CheckResult("record", "fail", "; ".join(problems), evidence)
    return CheckResult("record", "pass", f"a completed, official run of {track.name} v{track.version}", evidence)


def check_code(record: RunRecord, facts: ServerFacts) -> CheckResult:
    claimed = record.provenance.code if record.provenance else {}
    evidence = {"claimed": claimed, "server": facts.code_hashes, "frozen": list(facts.frozen_packages)}
    bad = [p for p in facts.frozen_packages if claimed.get(p) != facts.code_hashes.get(p)]
    if bad:
        why = ", ".join(
            f"{p} code hash {_short(claimed.get(p))} differs from the server's {_short(facts.code_hashes.get(p))}"
            for p in bad
        )
        return CheckResult("code", "fail", f"{why}: the run did not use the frozen {', '.join(bad)} code", evidence)
    return CheckResult("code", "pass", f"{', '.join(facts.frozen_packages)} code hashes equal the server's", evidence)


def check_data(record: RunRecord, facts: ServerFacts) -> CheckResult:
    claimed = record.provenance.data.fingerprint if record.provenance and record.provenance.data else None
    evidence = {"claimed": claimed, "expected": facts.data_hash}
    if not facts.data_hash:
        return CheckResult(
            "data", "error", "the server has neither a pinned data hash for this track nor its data", evidence
        )
    if claimed != facts.data_hash:
        return CheckResult(
            "data", "fail", f"dataset hash {_short(claimed)} is not the track's {_short(facts.data_hash)}", evidence
        )
    return CheckResult("data", "pass", "the dataset hash is the track's", evidence)


def check_tokenizer(record: RunRecord, facts: ServerFacts) -> CheckResult:
    claimed = record.provenance.tokenizer if record.provenance else None
    evidence = {"claimed": claimed, "server": facts.tokenizer_hash}
    if not facts.tokenizer_hash:
        return CheckResult(
            "tokenizer", "error", "the server has no tokenizer for this track (set track_resources)", evidence
        )
    if claimed != facts.tokenizer_hash:
        return CheckResult(
            "tokenizer",
            "fail",
            f"tokenizer hash {_short(claimed)} is not the server's {_short(facts.tokenizer_hash)}",
            evidence,
        )
    return CheckResult("tokenizer", "pass", "the tokenizer hash is the server's", evidence)


def check_hardware(record: RunRecord, telemetry: list[dict], track) -> CheckResult:
    env = record.provenance.environment if record.provenance else None
    info = next((t for t in telemetry if t.get("kind") == "info"), {})
    nvml = info.get("nvml") if isinstance(info.get("nvml"), dict) else {}
    nvml_names = [str(g.get("name", "")) for g in nvml.get("gpus") or [] if isinstance(g, dict)]
    env_names = [g.name for g in env.gpus] if env else []
    nproc = record.nproc
    cpu_count = env.cpu_count_available if env else None
    evidence = {
        "nproc": nproc,
        "environment_gpus": env_names,
        "telemetry_gpus": nvml_names,
        "cpu_count_available": cpu_count,
        "telemetry_cpu_count": info.get("cpu_count"),
    }
    problems = []
    if track.hardware_kind == "cuda":
        model = (track.gpu_model or "").lower()
        if nproc != track.gpu_count:
            problems.append(f"{nproc} ranks, the track runs on {track.gpu_count} GPUs")
        if len(env_names) < track.gpu_count:
            problems.append(f"provenance shows {len(env_names)} GPUs, the track needs {track.gpu_count}")
        for source, names in (("provenance", env_names), ("telemetry", nvml_names)):
            wrong = sorted({n for n in names if model not in n.lower()})
            if wrong:
                problems.append(f"{source} shows {', '.join(wrong)}, the track needs {track.gpu_model}")
        if not nvml_names:
            problems.append("the telemetry has no GPU readings (NVML): the hardware is unproven")
    else:
        threads = track.cpu_threads or 1
        if nproc != 1:
            problems.append(f"{nproc} processes, a CPU track runs one")
        have = cpu_count or info.get("cpu_count")
        if have is None or have < threads:
            problems.append(f"the machine shows {have} CPU threads, the track uses {threads}")
    if problems:
        return CheckResult("hardware", "fail", "; ".join(problems), evidence)
    return CheckResult("hardware", "pass", f"the run shows the track's hardware ({track.hardware_kind})", evidence)


# ------------------------------------------------------------------ timing


def check_train_time(record: RunRecord, events: list[Event], facts: ServerFacts) -> tuple[CheckResult, float | None]:
    recomputed, ordered = timed_seconds(events), last_per_step(events)
    claimed = record.timing.train_time_s if record.timing else None
    n_steps = record.timing.steps if record.timing else None
    evidence = {
        "claimed_s": claimed,
        "recomputed_s": recomputed,
        "rule": RULE,
        "steps_claimed": n_steps,
        "steps_logged": len(ordered),
    }
    problems = []
    missing = sorted(set(range(n_steps or 0)) - {e.step for e in ordered})
    if missing:
        problems.append(f"{len(missing)} of {n_steps} steps have no step event (first: {missing[0]})")
    tol = max(facts.time_abs_tolerance_s, facts.time_rel_tolerance * abs(claimed or 0.0))
    if claimed is None or abs(recomputed - claimed) > tol:
        problems.append(f"train_time_s claimed {claimed}, the step events sum to {recomputed:.6f}")
    excess, allowed, impossible = _wall_gaps(events, record)
    evidence.update(unexplained_wall_s=excess, allowed_wall_s=allowed, impossible_steps=impossible[:5])
    if excess > allowed:
        problems.append(
            f"the step events' wall clock shows {excess:.3f}s more than their dt_s (allowed {allowed:.3f}s): "
            "step times were edited"
        )
    if impossible:
        problems.append(f"{len(impossible)} steps took longer (dt_s) than the wall clock between their events")
    if problems:
        return CheckResult("train_time", "fail", "; ".join(problems), evidence), recomputed
    return CheckResult("train_time", "pass", f"{recomputed:.3f}s timed, as claimed", evidence), recomputed


def _wall_gaps(events: list[Event], record: RunRecord) -> tuple[float, float, list[int]]:
    """(unexplained wall seconds, the slack allowed, impossible steps) over the timed steps whose previous
    line is the previous step's event.

    The trainer writes each step event right after measuring dt_s, and the next step starts right
    after, so wall(step i) - wall(step i-1) ≈ dt_s(i). A val eval (its own event) or a checkpoint save
    between the two is legitimate and skipped.
    """
    save_every = (record.config or {}).get("save_every") or 0
    excess, allowed, impossible = 0.0, GAP_SLACK_S, []
    for prev, cur in zip(events, events[1:], strict=False):
        if not (isinstance(prev, StepEvent) and isinstance(cur, StepEvent)) or cur.step != prev.step + 1:
            continue
        if save_every > 0 and cur.step % save_every == 0:
            continue
        gap = cur.wall - prev.wall
        if cur.dt_s > gap + 0.05:
            impossible.append(cur.step)
        excess += max(0.0, gap - cur.dt_s)
        allowed += GAP_SLACK_PER_STEP_S + GAP_SLACK_FRACTION * cur.dt_s
    return excess, allowed, impossible


# ------------------------------------------------------------------ weights and the metric


def check_weights(bundle_dir: Path) -> tuple[CheckResult, dict | None]:
    path = bundle_dir / "model.safetensors"
    kind, header = recompute.weights_format(path)
    if header is None:
        detail = (
            f"model.safetensors is {kind}, not safetensors: the server loads weights with safetensors only and "
            "never unpickles; save them with safetensors.torch.save_file (baseline.checkpoint does)"
        )
        return CheckResult("weights", "fail", detail, {"format": kind}), None
    model_config = read_meta(bundle_dir)["model_config"]
    n_layer, n_tensors = model_config.get("n_layer"), len(recompute.header_shapes(header))
    if not isinstance(n_layer, int) or not 0 < n_layer <= n_tensors:  # each layer holds tensors: bound the build
        detail = f"the weights do not fit meta.json's model: {n_layer} layers, but the file holds {n_tensors} tensors"
        return CheckResult("weights", "fail", detail, {"model_config": model_config}), None
    try:
        expected = recompute.expected_shapes(model_config)
    except (TypeError, ValueError, AssertionError) as e:
        return CheckResult("weights", "fail", f"meta.json model_config does not describe the model: {e}", {}), None
    got = recompute.header_shapes(header)
    got = {k.removeprefix("_orig_mod."): v for k, v in got.items()}
    evidence = {
        "format": "safetensors",
        "tensors": len(got),
        "model_config": model_config,
        "parameters": sum(math.prod(s) for s in got.values()),
    }
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        detail = (
            f"the weights do not fit meta.json's model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}"
        )
        return CheckResult("weights", "fail", detail, evidence), None
    return CheckResult("weights", "pass", f"safetensors, {len(got)} tensors that fit the model", evidence), model_config


def check_metric(record: RunRecord, bundle_dir: Path, track, facts: ServerFacts) -> tuple[list[CheckResult], dict]:
    """Recompute val bpb (always) and CORE (on a CORE track); compare each with its claim."""
    recomputed = {}
    if facts.tokenizer_dir is None or facts.data_dir is None:
        why = "the server has no tokenizer or val data for this track (set track_resources)"
        return [CheckResult("metric", "error", why, {})], recomputed
    tokens = facts.eval_tokens
    batch_size = (record.config or {}).get("device_batch_size") or 32
    key = (
        file_sha256(bundle_dir / "model.safetensors"),
        file_sha256(bundle_dir / "meta.json"),
        str(facts.tokenizer_dir),
        str(facts.data_dir),
        tokens,
        batch_size,
        facts.device,
    )
    loaded = []  # the model is loaded only when something is not already known for these weights

    def model_and_tokenizer():
        if not loaded:
            loaded.append(recompute.load_checkpoint(bundle_dir, tokenizer_dir=facts.tokenizer_dir, device=facts.device))
        return loaded[0]

    bpb = _BPB_CACHE.get(key)
    if bpb is None:
        bpb = _BPB_CACHE[key] = recompute.val_bpb(
            *model_and_tokenizer(), data_dir=facts.data_dir, tokens=tokens, batch_size=batch_size
        )
    recomputed["val_bpb"] = bpb["bpb"]
    results = [
        _compare(
            "val_bpb",
            record.result.val_bpb if record.result else None,
            bpb["bpb"],
            facts.bpb_abs_tolerance,
            {"tokens": bpb["tokens"], "batch_size": batch_size, "total_bytes": bpb["total_bytes"]},
        )
    ]
    if track.metric == "core":
        if facts.eval_bundle is None:
            results.append(CheckResult("core", "error", "the server has no CORE eval bundle for this track", {}))
        else:
            c = recompute.core(
                *model_and_tokenizer(), eval_bundle=facts.eval_bundle, max_per_task=facts.core_max_per_task
            )
            recomputed["core"] = c["core"]
            extra = {"official": c["official"], "bundle_sha256": c["bundle"]["content_sha256"]}
            claimed_core = record.result.core if record.result else None
            results.append(_compare("core", claimed_core, c["core"], facts.core_abs_tolerance, extra))
    claimed_value = record.result.value if record.result else None
    value = recomputed.get(track.metric)
    if value is not None and claimed_value is not None and abs(claimed_value - value) > _tol(track, facts):
        results.append(
            CheckResult(
                "metric",
                "fail",
                f"result.value claims {claimed_value}, recomputed {track.metric} is {value:.6f}",
                {"claimed": claimed_value, "recomputed": value},
            )
        )
    return results, recomputed


def _tol(track, facts: ServerFacts) -> float:
    return facts.core_abs_tolerance if track.metric == "core" else facts.bpb_abs_tolerance


def _compare(name: str, claimed, recomputed: float, tol: float, extra: dict) -> CheckResult:
    evidence = {"claimed": claimed, "recomputed": recomputed, "tolerance": tol, **extra}
    if claimed is None or not math.isfinite(recomputed) or abs(claimed - recomputed) > tol:
        return CheckResult(
            name, "fail", f"{name} claimed {claimed}, recomputed {recomputed:.6f} (tolerance {tol:g})", evidence
        )
    return CheckResult(name, "pass", f"{name} {recomputed:.6f} recomputed, claimed {claimed:.6f}", evidence)
