"""A campaign, before any training: the submission checked, the track's data and tokenizer ready, the
hardware matched, and one run directory per seed written (status registered) with its run.json, its
first record.json and the submission's source.tar.

    campaign, run_dirs = register(load_track("cpu-books"), "baseline", seeds=[42, 43], runs_dir=Path("runs"))

harness/runner.py then runs them. Every check that can refuse a campaign runs here, before anything is
written: a broken plug-in, a repeated seed, a division the track does not rank, hardware or data that
do not match the track (unless --unofficial), a bad shape; a leaderboard's registration comes last.
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from baseline.config import TrainConfig, plan_training
from baseline.dataset import download_shards, list_shards, shard_name, write_view
from baseline.tokenizer import Tokenizer, train_from_shards
from harness import provenance
from protocol.hashing import code_hashes, folder_or_file_hash, tree_hash
from protocol.paths import REPO, eval_bundle_dir, passed_checks_dir, track_data_dir, track_tokenizer_dir
from protocol.record import (
    Campaign,
    Provenance,
    RunRecord,
    RunSpec,
    SubmissionRef,
    TrackRef,
    now_iso,
    write_campaign,
    write_record,
    write_spec,
)
from protocol.source import SOURCE_FILE, check_source, pack_source
from protocol.tracks import Track
from submissions.contract import SUBMISSIONS_DIR, SubmissionError, check_eval_budget
from submissions.contract import resolve as resolve_submission

SOURCE_DIR = "source"  # in an open run's directory: the submission's code, unpacked from source.tar


class Preflight(ValueError):
    """The run does not match its track; the message says how to fix it or to pass --unofficial."""


# ---------------------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class CheckedSubmission:
    name: str
    path: Path  # its folder (or single .py file)
    config: dict  # its validated CONFIG overrides
    division: str = "closed"  # "open" when it defines build_model (submissions/contract.py)


def checked_submission(submission: str) -> CheckedSubmission:
    """The submission, loaded and checked in a child process (harness/plugin_check.py): its code never runs here.

    A pass is remembered under the cache root, keyed by everything the check reads (the submission's files and
    place, the frozen code, the submissions package, Python and torch), so running the same code again skips the
    child's imports and tiny training (~3 s); a change to any of them checks again. Only passes are kept, and
    the check only refuses early what the guard, the runner and the server would refuse anyway.
    """
    given = str(submission)
    if not (SUBMISSIONS_DIR / given.replace(".", "/")).exists() and Path(given).exists():
        given = str(Path(given).resolve())  # a path from the caller's directory; the check runs in the repo
    passed, path = _passed_check_file(given)
    if passed is not None and passed.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            checked = _checked(json.loads(passed.read_text()))
            if checked.path == path:  # an entry that names another folder is not this submission's pass
                return checked
    out = subprocess.run(
        [sys.executable, "-m", "harness.plugin_check", given],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if line.startswith("speedrun: error: ")), None)
        if error:
            raise SubmissionError(error.removeprefix("speedrun: error: "))
        raise RuntimeError(f"the conformance check of {submission} crashed: {' | '.join(lines[-3:])}")
    line = out.stdout.strip().splitlines()[-1]
    checked = _checked(json.loads(line))
    if passed is not None:
        passed.parent.mkdir(parents=True, exist_ok=True)
        tmp = passed.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(line)
        tmp.replace(passed)  # atomic: a concurrent campaign never reads half a file
    return checked


def _checked(raw: dict) -> CheckedSubmission:
    return CheckedSubmission(name=raw["name"], path=Path(raw["path"]), config=raw["config"], division=raw["division"])


def _passed_check_file(given: str) -> tuple[Path | None, Path | None]:
    """(where a pass of this submission's check is remembered, its resolved folder or file), or (None, None)
    when it does not resolve (the check then says why)."""
    try:
        path = resolve_submission(given)[1].resolve()
    except SubmissionError:
        return None, None
    key = {
        "submission": folder_or_file_hash(path),
        "path": str(path),
        "code": code_hashes(REPO),
        "submissions": tree_hash(SUBMISSIONS_DIR),
        "python": sys.version,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return passed_checks_dir() / f"{digest}.json", path


def prepare_data(track: Track, data_dir: Path) -> list[Path]:
    """The track's shards in data_dir, downloaded (with resume) when the track's source allows."""
    if track.dataset.source == "climbmix":
        if track.dataset.shards:
            wanted = [int(name.removeprefix("shard_").removesuffix(".parquet")) for name in track.dataset.shards]
        else:
            wanted = list(range(track.dataset.num_train_shards))
        missing = [i for i in wanted if not (data_dir / shard_name(i)).is_file()]
        if missing:
            print(f"downloading {len(missing)} ClimbMix shards into {data_dir}")
            download_shards(missing, data_dir)
    files = list_shards(data_dir)
    if track.dataset.shards:
        names = {f.name: f for f in files}
        absent = [n for n in track.dataset.shards if n not in names]
        if absent:
            raise FileNotFoundError(f"{data_dir} lacks {absent} of track {track.name}: pass --data-dir with them")
        files = [names[n] for n in track.dataset.shards]
    return files


def prepare_tokenizer(track: Track, train_files: list[Path], data_hash: str) -> Path:
    """The track's tokenizer, trained once per (track, data) on the train split and cached."""
    spec = track.tokenizer
    out = track_tokenizer_dir(track, data_hash)
    if not (out / "tokenizer.json").is_file():
        print(f"training a {spec.vocab_size}-token tokenizer on {len(train_files)} train shards -> {out}")
        with tempfile.TemporaryDirectory() as view:
            train_from_shards(write_view(view, {"train": train_files}), out, spec.vocab_size, spec.max_chars,
                              spec.doc_cap)  # fmt: skip
    return out


def preflight(track: Track, nproc: int, nnodes: int) -> list[str]:
    """Reasons this machine does not match the track's hardware (empty when it does)."""
    hw, problems = track.hardware, []
    if hw.kind == "cuda":
        count = torch.cuda.device_count()
        names = {torch.cuda.get_device_name(i) for i in range(count)}
        if nproc * nnodes != hw.gpu_count:
            problems.append(f"track {track.name} runs on {hw.gpu_count} GPUs, this run uses {nproc * nnodes} ranks")
        if count < nproc:
            problems.append(f"--nproc {nproc} but this machine has {count} CUDA GPUs")
        if hw.gpu_model and not all(hw.gpu_model.lower() in n.lower() for n in names):
            problems.append(f"track {track.name} needs {hw.gpu_model} GPUs, this machine has {sorted(names) or 'none'}")
    else:
        if (os.cpu_count() or 1) < (hw.cpu_threads or 1):
            problems.append(f"track {track.name} uses {hw.cpu_threads} CPU threads, this machine has {os.cpu_count()}")
        if nproc != 1:
            problems.append(f"track {track.name} is one process; drop --nproc")
    return problems


def register(
    track: Track,
    submission: str,
    *,
    seeds: list[int],
    runs_dir: Path,
    data_dir: Path | None = None,
    nproc: int = 1,
    max_steps: int | None = None,
    unofficial: bool = False,
    checkpoint_every_s: float | None = None,
    campaign_id: str | None = None,
    registrar: Callable[[Campaign], str] | None = None,
) -> tuple[Campaign, list[Path]]:
    """Prepare the track and write every seed's run directory (status registered) and the campaign file.

    `registrar` (a leaderboard's registration, `speedrun run --server`) is called once every local check
    has passed, the submission's, the hardware's, the data's and each seed's plan, and before anything is
    written: it returns the campaign id the server issued, which names the runs.
    """
    campaign, plugin = plan_campaign(track, submission, seeds, campaign_id)
    source = packed_source(plugin.path, campaign.submission)
    reasons = preflight(track, nproc, 1)
    if reasons and not unofficial:
        raise Preflight(f"{'; '.join(reasons)}: run on the track's hardware, or pass --unofficial to run anyway")
    data_dir = track_data_dir(track, data_dir)
    files = prepare_data(track, data_dir)
    data_hash = provenance.shards_hash(files)
    if track.dataset.content_hash and data_hash != track.dataset.content_hash:
        pinned = track.dataset.content_hash
        problem = f"data in {data_dir} has content hash {data_hash[:12]}…, track {track.name} pins {pinned[:12]}…"
        if not unofficial:
            raise Preflight(f"{problem}: use the track's shards, or pass --unofficial")
        reasons.append(problem)
    splits = track.dataset.splits(files)
    tokenizer_dir = prepare_tokenizer(track, splits["train"], data_hash)
    vocab = Tokenizer.load(tokenizer_dir).vocab_size
    if max_steps is not None:
        reasons.append(f"smoke run (--max-steps {max_steps})")
    # What the training process may not read: the val split, the held-out split if this machine has it,
    # the CORE eval bundle.
    denied = [*splits["val"], *(data_dir / n for n in track.dataset.heldout_shards), eval_bundle_dir()]
    plans = []
    for seed in seeds:
        config = TrainConfig(**track.training_config(plugin.config), vocab_size=vocab, seed=seed)
        plans.append((config, plan_training(config, nproc)))  # fails here, before launching, on a bad shape
        check_eval_budget(config, nproc)
    if registrar is not None:
        named = registrar(campaign)
        campaign = campaign.model_copy(update={"campaign_id": named, "run_ids": [f"{named}-s{s}" for s in seeds]})
    run_dirs = []
    for seed, run_id, (config, plan) in zip(seeds, campaign.run_ids, plans, strict=True):
        run_dir = runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / SOURCE_FILE).write_bytes(source)
        code = plugin.path
        if plugin.division == "open":  # the eval and the server run this very code: the run's own copy of it
            ref = campaign.submission
            code = check_source(source, run_dir / SOURCE_DIR, name=ref.name, expected=ref.hash)
        spec = RunSpec(
            submission=_relative(code, run_dir),
            config=asdict(config),
            data_dir=_relative(write_view(run_dir / "data" / "train", {"train": splits["train"]}), run_dir),
            val_dir=_relative(write_view(run_dir / "data" / "val", {"val": splits["val"]}), run_dir),
            tokenizer_dir=_relative(tokenizer_dir, run_dir),
            deny_reading=[_relative(p, run_dir) for p in denied],
            device="cpu" if track.hardware.kind == "cpu" else "cuda",
            max_steps=max_steps,
            target_metric=track.target.metric,
            core_max_per_task=track.target.core_max_per_task,
            cpu_threads=track.hardware.cpu_threads if track.hardware.kind == "cpu" else None,
            price_per_hour=track.price_per_hour,
            gpu_count=max(track.hardware.gpu_count, 1),
            checkpoint_every_s=checkpoint_every_s,
        )
        write_spec(run_dir, spec)
        record = RunRecord(
            run_id=run_dir.name,
            status="registered",
            official=not reasons,
            unofficial_reasons=list(reasons),
            created=now_iso(),
            command=provenance.portable_argv(sys.argv),
            seed=seed,
            nproc=nproc,
            submission=campaign.submission,
            track=campaign.track,
            config=asdict(config),
            plan=plan.to_dict(),
            provenance=Provenance(
                **provenance.collect(
                    submission_dir=plugin.path,
                    division=plugin.division,
                    data_files=files,
                    data_hash=data_hash,
                    tokenizer_dir=tokenizer_dir,
                    config=asdict(config),
                    seed=seed,
                )  # fmt: skip
            ),
        )
        write_record(run_dir, record)
        run_dirs.append(run_dir)
    write_campaign(runs_dir, campaign)
    print(f"campaign {campaign.campaign_id}: {len(seeds)} runs registered ({track.name}, {campaign.submission.name})")
    return campaign, run_dirs


def plan_campaign(
    track: Track, submission: str, seeds: list[int], campaign_id: str | None = None
) -> tuple[Campaign, CheckedSubmission]:
    """The campaign a `speedrun run` will register: distinct seeds, a checked submission, the runs' names."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seed {repeated[0]} is given twice: every seed counts once, pass distinct seeds")
    plugin = checked_submission(submission)  # refuse a broken plug-in before any data or training work
    if plugin.division not in track.divisions:
        raise ValueError(
            f"track {track.name} ranks the {' and '.join(track.divisions)} division only, and {plugin.name} is in the "
            f"{plugin.division} one: pick a track whose divisions include {plugin.division!r} (speedrun tracks)"
        )
    if plugin.division == "open" and track.target.metric != "val_bpb":
        raise ValueError(
            f"track {track.name} is judged by {track.target.metric}, and the open division's eval "
            "(harness/open_eval.py) scores val bpb only so far: run it on a val_bpb track (cpu-books, d12)"
        )
    submission_ref = SubmissionRef(**provenance.submission_ref(plugin.path, plugin.division))
    track_ref = TrackRef(name=track.name, version=track.version, metric=track.target.metric,
                         threshold=track.target.threshold, higher_is_better=track.target.higher_is_better,
                         kind=track.kind, budget_s=track.target.budget_s)  # fmt: skip
    campaign_id = campaign_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{track.name}-{submission_ref.name}"
    campaign = Campaign(campaign_id=campaign_id, created=now_iso(), track=track_ref, submission=submission_ref,
                        seeds=seeds, run_ids=[f"{campaign_id}-s{seed}" for seed in seeds])  # fmt: skip
    return campaign, plugin


def packed_source(path: Path, ref: SubmissionRef) -> bytes:
    """source.tar of the submission (protocol/source.py), checked to hold exactly the files its recorded hash covers:
    what an upload carries and the leaderboard re-runs."""
    source = pack_source(path)
    with tempfile.TemporaryDirectory() as scratch:
        check_source(source, Path(scratch) / "source", name=ref.name, expected=ref.hash)
    return source


def _relative(path: Path, run_dir: Path) -> str:
    """`path` as seen from the run directory: run.json names no absolute path of this machine."""
    return os.path.relpath(Path(path).resolve(), run_dir.resolve())
