"""The verification checks: each a function of (the stored bundle, the track, the server's own facts).

What is recomputed and what is cross-checked:
  record       the record is a completed, official run of this track's name and version
  weights      model.safetensors is safetensors (a pickle or torch.save zip is rejected unread), and its
               tensors have exactly the shapes meta.json's model_config implies
  code         the frozen packages' code hashes (Settings.frozen_packages) equal the server's own
  data         the dataset fingerprint equals the track's pinned content hash (else the server's data)
  tokenizer    the tokenizer hash equals the server's copy of the track's tokenizer
  hardware     the provenance and telemetry show the track's hardware (GPU model and count, CPU threads)
  train_time   leaderboard/check_timing.py: the timed seconds recomputed from the step events alone
  weights      (again: uploads checked it) safetensors whose tensors are exactly meta.json's model
  metric       val bpb (and CORE on a CORE track) recomputed with the frozen eval on the server's val
               data and tokenizer equals the claim within Settings tolerances; an open run's model is
               its submission's code, run only in the sandbox (leaderboard/open_metric.py), whose logits
               the server scores itself (judge_open_score)
  heldout      the same model's bpb on the server's held-out shards (the track pins their names and
               hash): a gap over ServerFacts.heldout_gap_bpb flags the run for an admin's review
Outcomes: pass, fail (the run is rejected; `detail` is the reason), skip (does not apply), error (the
server could not run it: the job stays pending and is retried, up to Settings.max_attempts).
A fully consistent forgery of every file but the weights is caught only by `metric`; what the
step events claim beyond that is cross-checked, not re-measured (only rerunning could).
These run in the verification child (leaderboard/verify_child.py), never in the worker itself.
"""

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from baseline.dataset import write_view
from leaderboard import members, recompute
from protocol.record import RunRecord
from protocol.tracks import Track


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
    budget_s: float = 0.0  # a fixed-budget track's training budget in timed seconds (0: time-to-target)
    core_max_per_task: int = -1
    device: str = "cpu"
    bpb_abs_tolerance: float = 2e-3
    core_abs_tolerance: float = 2e-3
    time_rel_tolerance: float = 1e-6
    time_abs_tolerance_s: float = 1e-3
    heldout_files: tuple[Path, ...] = ()  # the server's copies of the track's held-out shards
    heldout_error: str | None = None  # why there are none (missing, or their fingerprint is not the pin)
    heldout_gap_bpb: float = 0.05

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "ServerFacts":
        raw = json.loads(text)
        for key in ("tokenizer_dir", "data_dir", "eval_bundle"):
            raw[key] = Path(raw[key]) if raw[key] else None
        raw["heldout_files"] = tuple(Path(p) for p in raw["heldout_files"])
        raw["frozen_packages"] = tuple(raw["frozen_packages"])
        return cls(**raw)


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


def check_hardware(record: RunRecord, info: dict | None, track) -> CheckResult:
    """`info`: the telemetry's info line (members.InfoLine, as the run's summary keeps it)."""
    env = record.provenance.environment if record.provenance else None
    info = info or {}
    nvml_names = [g["name"] for g in (info.get("nvml") or {}).get("gpus") or []]
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


# ------------------------------------------------------------------ weights and the metric


def check_weights(bundle_dir: Path, track: Track, division: str = "closed") -> tuple[CheckResult, dict | None]:
    """The upload checked this already; checked again, because the verifier trusts no earlier step."""
    path = bundle_dir / "model.safetensors"
    kind, _header = recompute.weights_format(path)
    if kind != "safetensors":
        detail = (
            f"model.safetensors is {kind}, not safetensors: the server loads weights with safetensors only and "
            "never unpickles; save them with safetensors.torch.save_file (baseline.checkpoint does)"
        )
        return CheckResult("weights", "fail", detail, {"format": kind}), None
    try:
        _start, entries = members.read_safetensors_header(path)
        meta = json.loads((bundle_dir / "meta.json").read_text())
        config = members.check_model_against_track(meta, entries, track, division)
    except ValueError as e:
        return CheckResult("weights", "fail", str(e), {}), None
    evidence = {
        "format": "safetensors",
        "tensors": len(entries),
        "model_config": config.model_dump(),
        "parameters": sum(math.prod(e.shape) for e in entries.values()),
    }
    detail = f"safetensors, {len(entries)} tensors that fit the model"
    if division == "open":
        detail = f"safetensors, {len(entries)} tensors of the submission's own model (its code loads them, sandboxed)"
    return CheckResult("weights", "pass", detail, evidence), config.model_dump()


def check_metric(record: RunRecord, bundle_dir: Path, track, facts: ServerFacts) -> tuple[list[CheckResult], dict]:
    """Recompute val bpb (always) and CORE (on a CORE track); compare each with its claim."""
    recomputed = {}
    if facts.tokenizer_dir is None or facts.data_dir is None:
        why = "the server has no tokenizer or val data for this track (set track_resources)"
        return [CheckResult("metric", "error", why, {})], recomputed
    tokens = facts.eval_tokens
    batch_size = (record.config or {}).get("device_batch_size") or 32  # bounded at upload (uploads.MAX_EVAL_BATCH)
    model, tokenizer = recompute.load_checkpoint(bundle_dir, tokenizer_dir=facts.tokenizer_dir, device=facts.device)
    bpb = recompute.val_bpb(model, tokenizer, data_dir=facts.data_dir, tokens=tokens, batch_size=batch_size)
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
            c = recompute.core(model, tokenizer, eval_bundle=facts.eval_bundle, max_per_task=facts.core_max_per_task)
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
    heldout, recomputed["heldout_bpb"] = check_heldout(model, tokenizer, bpb["bpb"], batch_size, facts)
    results.append(heldout)
    return results, recomputed


def check_heldout(model, tokenizer, val_bpb: float, batch_size: int, facts: ServerFacts) -> tuple[CheckResult, float]:
    """The model's bpb on the server's held-out shards of the same source; a gap over the threshold flags the
    run for review (outcome "flag": it verifies, and does not rank until an admin clears it)."""
    if facts.heldout_error:
        return CheckResult("heldout", "error", facts.heldout_error, {}), None
    if not facts.heldout_files:
        return CheckResult("heldout", "skip", "the track pins no held-out shards", {}), None
    with tempfile.TemporaryDirectory(prefix="heldout-") as tmp:
        view = write_view(tmp, {"val": list(facts.heldout_files)})  # eval.bpb scores the view's val split
        bpb = recompute.val_bpb(model, tokenizer, data_dir=view, tokens=facts.eval_tokens, batch_size=batch_size)
    return judge_heldout(bpb["bpb"], val_bpb, facts), bpb["bpb"]


def judge_heldout(bpb: float, val_bpb: float, facts: ServerFacts) -> CheckResult:
    """The held-out bpb against the val bpb: pass, or a flag over facts.heldout_gap_bpb."""
    gap = bpb - val_bpb
    evidence = {"heldout_bpb": bpb, "val_bpb": val_bpb, "gap": gap, "threshold": facts.heldout_gap_bpb}
    if not math.isfinite(gap) or gap > facts.heldout_gap_bpb:
        detail = (
            f"held-out bpb {bpb:.4f} is {gap:.4f} above the val bpb {val_bpb:.4f} (threshold "
            f"{facts.heldout_gap_bpb:g}): the model may have seen the val shard; an admin reviews it before it ranks"
        )
        return CheckResult("heldout", "flag", detail, evidence)
    return CheckResult("heldout", "pass", f"held-out bpb {bpb:.4f}, {gap:+.4f} from the val bpb", evidence)


def judge_open_score(record: RunRecord, scored: dict, facts: ServerFacts) -> tuple[list[CheckResult], dict]:
    """An open model's sandboxed score (eval.open_scoring.score_in_sandbox's result) against the run's claims
    (val bpb: the runner refuses open runs on tracks judged by another metric)."""
    evidence = {k: scored.get(k) for k in ("tokens", "batch_size", "seq_len", "seconds")}
    if scored["problem"]:
        why = f"the open model broke the eval's rules: {scored['problem']}"
        return [CheckResult("metric", "fail", why, evidence)], {}
    bpb = scored["bpb"]
    results = [_compare("val_bpb", record.result.val_bpb if record.result else None, bpb, facts.bpb_abs_tolerance,
                        evidence | {"total_bytes": scored["total_bytes"]})]  # fmt: skip
    claimed_value = record.result.value if record.result else None
    if claimed_value is not None and abs(claimed_value - bpb) > facts.bpb_abs_tolerance:
        results.append(
            CheckResult(
                "metric", "fail", f"result.value claims {claimed_value}, recomputed val_bpb is {bpb:.6f}",
                {"claimed": claimed_value, "recomputed": bpb},
            )
        )  # fmt: skip
    recomputed = {"val_bpb": bpb, "heldout_bpb": None}
    if facts.heldout_error:
        results.append(CheckResult("heldout", "error", facts.heldout_error, {}))
    elif scored["heldout"] is None:
        results.append(CheckResult("heldout", "skip", "the track pins no held-out shards", {}))
    else:
        recomputed["heldout_bpb"] = scored["heldout"]["bpb"]
        results.append(judge_heldout(recomputed["heldout_bpb"], bpb, facts))
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
