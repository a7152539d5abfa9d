"""The runner side's `speedrun` commands (the service's are in leaderboard/cli.py; speedrun.py mounts both).

    speedrun config --depth 24 --target-param-data-ratio 8     # every derived hyperparameter
    speedrun data download --num-shards 8 --data-dir DIR        # ClimbMix shards (+ the val shard)
    speedrun data chat --out DIR                                # a public conversation set for chat tuning
    speedrun tokenizer train --data-dir DIR --out DIR           # BPE tokenizer (rustbpe -> tiktoken)
    speedrun train --depth 4 --data-dir DIR --tokenizer DIR     # the frozen baseline trainer
    speedrun eval --checkpoint DIR --core --bpb                 # CORE / bits per byte
    speedrun tracks                                             # the tracks, targets, hardware
    speedrun new my_idea [--open]                               # scaffold a submission (--open: its own model)
    speedrun run baseline --track cpu-books --seeds 3           # a full run: data, train, eval, record
    speedrun resume RUN_ID                                      # continue a killed/preempted run
    speedrun stats RUN...                                       # mean ± std and the record p-value
    speedrun compare baseline my_idea                           # two campaigns: difference, Welch's t-test
    speedrun track calibrate cpu-books --seeds 3                # set a track's target from baseline runs
    speedrun chat-tune RUN_ID                                   # supervised fine-tune into a chat model
    speedrun submit runs/RUN... --server URL --token T          # upload runs for verification
    speedrun board runs/RUN...                                  # a local board: serve, submit, verify, chat
    speedrun runner --server URL --token T                      # a runner machine: re-run reproduction jobs
    speedrun reproduce WORK_DIR                                 # one re-run, inside the sandbox (reproducers start it)

`train` runs the same under `torchrun --nproc_per_node=N -m speedrun train ...`.
"""

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

# What the parsers need is imported here; each command imports what it runs, so that `speedrun --help` and the
# light commands do not pay for torch.compile's, the runner's and the statistics' imports (seconds per call).
from baseline import config as train_config
from eval.run import add_arguments as add_eval_arguments
from harness.chat_tune import DEFAULT_DATA_DIR, DOLLY_URL, ChatTuneConfig, chat_tune, default_config, fetch_chat_data
from harness.trackers import TRACKERS, EventTee, open_tracker, require
from protocol.events import drop_from_step
from protocol.record import (
    CAMPAIGNS_DIR,
    EXIT_DIVERGED,
    find_campaign,
    find_campaigns_of,
    find_run,
    read_campaign,
    read_record,
)
from protocol.tracks import format_tracks, list_tracks, load_track


def _config(args):
    plan = train_config.plan_training(train_config.from_args(args), args.world_size)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else train_config.describe(plan))


def _data_download(args):
    from baseline.dataset import download_shards

    download_shards(range(args.num_shards), args.data_dir)


def _tokenizer_train(args):
    from baseline.tokenizer import train_from_shards

    tok = train_from_shards(args.data_dir, args.out, args.vocab_size, args.max_chars, args.doc_cap)
    print(f"tokenizer with {tok.vocab_size} tokens written to {args.out}")


def _train(args):
    from baseline.device import destroy_runtime, init_runtime
    from baseline.train import train
    from eval.bpb import val_bpb_evaluator

    config = train_config.from_args(args)
    if args.log_to:
        require(args.log_to)
    runtime = init_runtime(args.device, seed=config.seed)
    tracker, result = None, None
    try:
        val_bpb = val_bpb_evaluator(
            args.tokenizer, args.data_dir, config.device_batch_size, config.max_seq_len, config.eval_tokens, runtime
        )
        if args.log_to and runtime.is_master:
            tracker = open_tracker(args.log_to, name=args.out.name, config=asdict(config), directory=args.out)
        result = train(
            config,
            runtime,
            data_dir=args.data_dir,
            tokenizer_dir=args.tokenizer,
            out_dir=args.out,
            resume=args.resume,
            stop_after_step=args.max_steps,
            val_bpb_fn=val_bpb,
            events_stream=_tee(args.out, args.resume, tracker) if tracker else None,
        )
        if runtime.is_master:
            print(
                f"{result.status}: {result.step} steps, train_time {result.train_time_s:.2f}s, "
                f"val bpb {result.val_bpb}, {result.tokens_per_s:,.0f} tok/s"
            )
    finally:
        if tracker is not None:
            summary = {"status": "failed"} if result is None else {
                k: getattr(result, k) for k in ("status", "step", "train_time_s", "val_bpb", "tokens_per_s", "mfu")
            }  # fmt: skip
            tracker.finish(summary)
        destroy_runtime()
    if result.status == "diverged":
        sys.exit(EXIT_DIVERGED)


def _tee(out_dir: Path, resume: bool, tracker) -> EventTee:
    """events.jsonl as the trainer keeps it (a resume first drops the steps it will run again), teed to the tracker."""
    from baseline.checkpoint import latest_checkpoint, read_meta

    out_dir.mkdir(parents=True, exist_ok=True)
    if resume and (ckpt := latest_checkpoint(out_dir / "checkpoints")) is not None:
        drop_from_step(out_dir / "events.jsonl", read_meta(ckpt)["step"])
    return EventTee(out_dir / "events.jsonl", tracker)


def _eval(args):
    from eval.run import main as eval_main

    eval_main(args)


def _tracks(args):
    print(format_tracks(list_tracks()))


DEFAULT_CHECKPOINT_MIN = {"cuda": 30.0, "cpu": None}  # GPU runs are long and often on preemptible machines
NEEDS_TOKEN = "needs --token (or $SPEEDRUN_TOKEN): `speedrun token create NAME` on the server makes one"
FOLLOWER_WAIT_S = 600  # how long another node waits for node 0 to register a multi-node run


def _seeds(args) -> list[int]:
    return args.seed_list or list(range(args.first_seed, args.first_seed + args.seeds))


def _run(args):
    from harness import verdicts
    from protocol import stats

    track = load_track(args.track)
    every = args.checkpoint_every if args.checkpoint_every is not None else DEFAULT_CHECKPOINT_MIN[track.hardware.kind]
    args.checkpoint_every_s = every * 60 if every else None
    args.registrar = _registrar(args) if args.server else None
    if args.launcher != "local":
        return _launch_elsewhere(args, track)
    # With --json, stdout carries the one JSON object only; what people read goes to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        run_dirs = _run_seeds(args, track)
        if args.server:
            _upload_finished(args, run_dirs)
    records = [read_record(d) for d in run_dirs]
    [campaign_file] = find_campaigns_of([run_dirs[0].name], args.runs_dir)
    campaign = verdicts.run_set(str(campaign_file), args.runs_dir)
    if args.json:
        if args.against:
            against = verdicts.run_set(args.against, args.runs_dir, track.name)
        else:
            against = verdicts.reference_set(track, args.runs_dir, campaign.label)
        print(json.dumps(_verdict_json(track, campaign, against), default=str))
    elif len(run_dirs) > 1:
        print(stats.format_summary(campaign.summary))
    bad = [r for r in records if r.status not in ("completed", "stopped")]
    if bad:  # scripts see it: a run that failed, diverged, broke a rule or never ran
        sys.exit(f"speedrun: {len(bad)} of {len(run_dirs)} runs did not complete ({bad[0].run_id}: {bad[0].status})")


def _registrar(args):
    """--server: once the local checks pass, the server issues the campaign's name and run ids, before anything
    runs (every seed counts there)."""
    from harness.submit import register_campaign

    if not args.token:
        raise ValueError(f"--server {NEEDS_TOKEN}")
    if args.max_steps is not None or args.unofficial or args.campaign_id:
        flag = "--max-steps" if args.max_steps is not None else "--unofficial" if args.unofficial else "--campaign-id"
        raise ValueError(f"{flag} with --server: a registered run is an official one the server names; drop one")

    def register_at_server(campaign) -> str:
        name = campaign.submission.name
        named = register_campaign(args.server, args.token, track=campaign.track.name, submission=name,
                                  seeds=campaign.seeds)  # fmt: skip
        print(f"registered {len(campaign.seeds)} runs of {name} on {args.server} as campaign {named}")
        return named

    return register_at_server


def _upload_finished(args, run_dirs: list[Path]) -> None:
    """Upload every run that ended (a miss as its record alone). One that can still be resumed (killed,
    preempted) or never started waits: it is a miss only if it has not arrived by its deadline."""
    from harness.submit import submit

    ended = [d for d in run_dirs if read_record(d).status not in ("registered", "running", "preempted", "killed")]
    submit(ended, args.server, args.token)
    if len(ended) < len(run_dirs):
        campaign_id = find_campaigns_of([run_dirs[0].name], args.runs_dir)[0].stem
        print(
            f"{len(run_dirs) - len(ended)} runs have not ended: `speedrun resume RUN`, then "
            f"`speedrun submit {campaign_id} --server {args.server} --token …` before their deadline"
        )


def _launch_elsewhere(args, track):
    """--launcher slurm|sky: register (here for SLURM, on the machines for SkyPilot), submit, note the jobs."""
    from harness.campaign import plan_campaign, register
    from harness.launchers import dispatch
    from harness.launchers.sky import SkyConfig
    from harness.launchers.slurm import SlurmConfig

    if args.launcher == "slurm":
        config = SlurmConfig.from_toml(args.slurm_config, partition=args.partition, account=args.account)
        campaign, run_dirs = register(track, args.submission, seeds=_seeds(args), runs_dir=args.runs_dir,
                                      data_dir=args.data_dir, nproc=args.nproc * args.nnodes, max_steps=args.max_steps,
                                      unofficial=args.unofficial, checkpoint_every_s=args.checkpoint_every_s,
                                      campaign_id=args.campaign_id, registrar=args.registrar)  # fmt: skip
        campaign = dispatch.submit_slurm(campaign, run_dirs, track=args.track, config=config, nodes=args.nnodes,
                                         nproc=args.nproc, time_min=args.time_min, runs_dir=args.runs_dir)  # fmt: skip
    else:
        config = SkyConfig.from_toml(args.sky_config, use_spot=args.spot, cloud=args.cloud, region=args.region)
        campaign, _ = plan_campaign(track, args.submission, _seeds(args), args.campaign_id)
        if args.registrar:  # the machines register the runs under the server's name
            named = args.registrar(campaign)
            campaign, _ = plan_campaign(track, args.submission, _seeds(args), named)
        campaign, _ = dispatch.submit_sky(campaign, submission=args.submission, track=args.track, config=config,
                                          checkpoint_every_min=args.checkpoint_every_s and args.checkpoint_every_s / 60,
                                          runs_dir=args.runs_dir, launch=not args.no_launch)  # fmt: skip
    for run_id, job in campaign.jobs.items():
        print(f"{run_id}: {args.launcher} job {job}")
    print(f"follow them with `speedrun status {campaign.campaign_id}`")
    if args.server:
        print(f"when they end: `speedrun submit {campaign.campaign_id} --server {args.server} --token …`")


def _execute(args):
    """A registered run, where a job put it: node 0 runs and records it, other nodes follow (multi-node)."""
    from harness.launchers import dispatch
    from harness.runner import execute, follow

    nnodes, node_rank, rdzv = dispatch.node_topology()
    nnodes, node_rank, rdzv = args.nnodes or nnodes, args.node_rank if args.node_rank is not None else node_rank, (
        args.rdzv_endpoint or rdzv)  # fmt: skip
    if node_rank > 0:
        run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.runs_dir) / args.run
        deadline = time.monotonic() + FOLLOWER_WAIT_S
        while not (run_dir / "run.json").is_file() and time.monotonic() < deadline:
            time.sleep(1.0)  # node 0 may still be registering the run (on the shared filesystem)
        sys.exit(follow(run_dir, nproc=args.nproc, nnodes=nnodes, node_rank=node_rank, rdzv=rdzv))
    run_dir = find_run(args.run, args.runs_dir)
    record = read_record(run_dir)
    if record.status != "registered":
        raise ValueError(f"run {record.run_id} is {record.status}: `speedrun resume {record.run_id}` continues a run")
    record = execute(run_dir, record, nproc=args.nproc, nnodes=nnodes, node_rank=0, rdzv=rdzv)
    print(f"run {record.run_id}: {record.status}, timed {record.timing.train_time_s if record.timing else 0.0:.1f}s")


def _status(args):
    """Every run of the named campaigns (or of every campaign): its record's status, and its job's where one runs."""
    from harness.launchers.slurm import status as slurm_status

    paths = [find_campaign(n, args.runs_dir) or n for n in args.campaigns] or sorted(
        (args.runs_dir / CAMPAIGNS_DIR).glob("*.json"))  # fmt: skip
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"no campaign {path!r} under {args.runs_dir / CAMPAIGNS_DIR}: see `speedrun status`"
            )
        c = read_campaign(path)
        states = slurm_status(list(c.jobs.values())) if c.launcher == "slurm" and c.jobs else {}
        print(f"{c.campaign_id} ({c.track.name}, {c.submission.name}, {c.launcher}):")
        for run_id in c.run_ids:
            try:
                record = read_record(find_run(run_id, args.runs_dir))
                status = record.status + (f", timed {record.timing.train_time_s:.1f}s" if record.timing else "")
            except FileNotFoundError:
                status = "no record here yet"
            job = c.jobs.get(run_id)
            where = f" [job {job}: {states.get(job, 'see the launcher')}]" if job else ""
            print(f"  {run_id}: {status}{where}")


def _run_seeds(args, track):
    from harness.runner import run

    return run(
        track,
        args.submission,
        seeds=_seeds(args),
        runs_dir=args.runs_dir,
        data_dir=args.data_dir,
        nproc=args.nproc,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv=args.rdzv_endpoint,
        max_steps=args.max_steps,
        unofficial=args.unofficial,
        checkpoint_every_s=args.checkpoint_every_s,
        campaign_id=args.campaign_id,
        registrar=args.registrar,
        log_to=args.log_to,
    )


def _verdict_json(track, campaign, base) -> dict:
    """What `speedrun run --json` prints: the runs, their statistics, the verdict against `base` (the baseline, or
    --against: harness/verdicts.py says which baseline)."""
    from protocol import stats

    out = {
        "campaign": campaign.label,
        "track": track.name,
        "kind": track.kind,
        "metric": track.target.metric,
        "runs": [
            {
                "run_id": r.run_id,
                "seed": r.seed,
                "status": r.status,
                "value": r.result.value if r.result else None,
                "train_time_s": r.timing.train_time_s if r.timing else None,
                "steps": r.timing.steps if r.timing else None,  # on a budget track, what the machine's speed allowed
            }
            for r in campaign.records
        ],  # fmt: skip
        "summary": campaign.summary,
        "against": None,
        "comparison": None,
        "verdict": "inconclusive",
    }
    if base is not None:
        v = stats.verdict(base, campaign, kind=track.kind, higher_is_better=track.target.higher_is_better)
        out |= {"against": base.label, "comparison": v, "verdict": v["verdict"]}
    return out


def _resume(args):
    from harness.runner import resume

    record = resume(find_run(args.run, args.runs_dir))
    print(f"run {record.run_id}: {record.status}, timed {record.timing.train_time_s if record.timing else 0.0:.1f}s")


def _print_stats(run_dirs, csv=None, json_out=None):
    from protocol import stats

    records = [read_record(d) for d in run_dirs]
    track = records[0].track
    if any(r.track.name != track.name for r in records):
        raise ValueError("runs from different tracks cannot be pooled: pass runs of one track")
    table = stats.runs_table(records)
    summary = stats.summarize(
        table, metric=track.metric, target=track.threshold, higher_is_better=track.higher_is_better
    )
    print(stats.format_summary(summary))
    if csv:
        stats.to_csv(table, csv)
    if json_out:
        stats.to_json(summary, json_out)


def _stats(args):
    dirs = []
    for name in args.runs:
        campaign = find_campaign(name, args.runs_dir)
        ids = read_campaign(campaign).run_ids if campaign else [name]
        dirs += [find_run(i, args.runs_dir) for i in ids]
    for campaign_path in find_campaigns_of([d.name for d in dirs], args.runs_dir):
        left_out = [i for i in read_campaign(campaign_path).run_ids if i not in {d.name for d in dirs}]
        if left_out:  # every seed counts: say so when some of a campaign's runs are not among these
            print(f"note: {len(left_out)} run(s) of campaign {campaign_path.stem} are left out ({left_out[0]}, ...): "
                  f"pass the campaign id to count every seed", file=sys.stderr)  # fmt: skip
    _print_stats(dirs, csv=args.csv, json_out=args.json)


def _compare(args):
    from harness import verdicts
    from protocol import stats

    a, b = (verdicts.run_set(name, args.runs_dir, args.track) for name in (args.a, args.b))
    track = b.records[0].track
    v = stats.verdict(a, b, kind=track.kind, higher_is_better=track.higher_is_better)
    if args.json:
        print(json.dumps(v, default=str))
    else:
        print(stats.format_verdict(v, track.metric))


def _calibrate(args):
    from harness.calibrate import calibrate

    result = calibrate(load_track(args.track), _seeds(args), args.runs_dir, args.data_dir, args.shorter_seeds)
    print(
        f"{args.track}: {result['metric']} mean {result['mean']:.5f} ± {result['std']:.5f} over "
        f"{len(result['values'])} seeds -> threshold {result['threshold']} (the baseline meets it at p = "
        f"{result['p_value']})"
    )
    if "shorter" in result:
        s = result["shorter"]
        loose = s["p_value"] is not None and s["p_value"] < 0.01
        verdict = "meets it, the target is too loose" if loose else "does not meet it"
        print(
            f"  {s['num_iterations']} steps instead: mean {s['mean']} over {len(s['values'])} seeds, p = "
            f"{s['p_value']} against the threshold: {verdict}"
        )


def _new(args):
    from submissions.scaffold import scaffold

    path = scaffold(args.name, open_division=args.open)
    print(f"created {path}: edit submission.py, then `speedrun run {args.name} --track cpu-books --seeds 3`")


def _data_chat(args):
    counts = fetch_chat_data(args.out, url=args.url, sha256=args.sha256, local_path=args.local_path)
    print(f"{counts['train']} train and {counts['val']} val conversations written to {args.out}")


def _chat_tune(args):
    given = {f.name: getattr(args, f.name) for f in fields(ChatTuneConfig) if getattr(args, f.name) is not None}
    config = replace(default_config(args.device), **given)
    child = chat_tune(find_run(args.run, args.runs_dir), data_dir=args.data_dir, device=args.device, config=config)
    print(f"chat model written to {child}")


def _submit(args):
    from harness.submit import submit

    if not args.token:
        raise ValueError(f"speedrun submit {NEEDS_TOKEN}")
    ids = []
    for name in args.runs:  # a campaign stands for all its runs
        campaign = find_campaign(name, args.runs_dir)
        ids += read_campaign(campaign).run_ids if campaign else [name]
    results = submit([find_run(r, args.runs_dir) for r in ids], args.server, args.token,
                     description=args.description, link=args.link)  # fmt: skip
    for r in results:
        print(json.dumps(r))


def _reproduce(args):
    from harness.reproduce import reproduce

    run_dir = reproduce(args.work_dir)
    record = read_record(run_dir)
    print(f"re-run {record.run_id}: {record.status}")


def _runner(args):
    from harness.runner_machine import serve_jobs

    n = serve_jobs(args.server, args.token, name=args.name, once=args.once, work_root=args.work_dir)
    print(f"runner: {n} reproduction jobs done")


def _board(args):
    from harness.local_board import board

    if not board([find_run(r, args.runs_dir) for r in args.runs], track_arg=args.track, data_dir=args.data_dir,
                 port=args.port, serve=not args.no_serve):  # fmt: skip
        sys.exit("speedrun: a run was not verified or the chat did not answer: see the lines above")


def _add_seed_arguments(p):
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (runs)")
    p.add_argument("--first-seed", type=int, default=42, help="seeds are first-seed, first-seed+1, ...")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds instead")


def _add_log_to(p):
    p.add_argument("--log-to", choices=TRACKERS, default=None,
                   help="also log the step events to an experiment tracker (offline without an account)")  # fmt: skip


def add_commands(sub) -> None:
    """Mount the runner side's subcommands on `speedrun`'s subparsers."""
    p = sub.add_parser("config", help="print every hyperparameter derived from --depth")
    train_config.add_arguments(p)
    p.add_argument("--world-size", type=int, default=1, help="number of ranks (for gradient accumulation)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_config)

    data = sub.add_parser("data", help="pretraining shards and chat data")
    data = data.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("download", help="download ClimbMix shards 0..N-1 and the val shard, with resume")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.set_defaults(func=_data_download)
    p = data.add_parser("chat", help="download (or copy --local-path) a conversation set for chat tuning")
    p.add_argument("--out", type=Path, required=True, help="writes train.jsonl and val.jsonl here")
    p.add_argument("--url", default=DOLLY_URL, help="a JSONL of dolly-style records or {messages: ...} lines")
    p.add_argument("--sha256", default=None, help="the expected sha256 of the download")
    p.add_argument("--local-path", type=Path, default=None, help="use this file instead of downloading")
    p.set_defaults(func=_data_chat)

    tok = sub.add_parser("tokenizer", help="BPE tokenizer").add_subparsers(dest="tok_command", required=True)
    p = tok.add_parser("train", help="train a tokenizer on the train split of the shards")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--max-chars", type=int, default=2_000_000_000, help="training text budget (characters)")
    p.add_argument("--doc-cap", type=int, default=10_000, help="characters kept of each document")
    p.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("train", help="train the frozen baseline (one process, or under torchrun)")
    train_config.add_arguments(p)
    p.add_argument("--data-dir", type=Path, required=True, help="directory of parquet shards (last = val)")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory")
    p.add_argument("--out", type=Path, default=Path("out/train"), help="events and checkpoints go here")
    p.add_argument("--device", choices=["cuda", "cpu", "mps"], default=None, help="default: autodetect")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this step (schedule unchanged)")
    _add_log_to(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("tracks", help="list the tracks with their targets and hardware")
    p.set_defaults(func=_tracks)

    p = sub.add_parser("run", help="run a submission on a track: data, tokenizer, training, eval, record")
    p.add_argument("submission", help="'baseline', a folder name under submissions/, or a path")
    p.add_argument("--track", required=True, help="track name (see `speedrun tracks`) or a track .toml file")
    _add_seed_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per node; >1 launches torchrun")
    p.add_argument("--nnodes", type=int, default=1, help="nodes (multi-node: also --node-rank, --rdzv-endpoint)")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", default=None, help="host:port of node 0 for multi-node runs")
    p.add_argument("--data-dir", type=Path, default=None, help="shards (default: the track's)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--max-steps", type=int, default=None, help="quick smoke run (the record is unofficial)")
    p.add_argument("--unofficial", action="store_true", help="run on hardware/data that do not match the track")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end (runs, stats, verdict)")
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=None,
        metavar="MINUTES",
        help="also save every MINUTES, for preemptible machines (default: 30 on GPU tracks, off on CPU)",
    )
    p.add_argument("--campaign-id", default=None, help="name the campaign (its runs are CAMPAIGN-sSEED)")
    p.add_argument(
        "--launcher",
        choices=["local", "slurm", "sky"],
        default="local",
        help="where the seeds run: here one after another, one SLURM job each, one cloud job each",
    )
    p.add_argument("--partition", default=None, help="SLURM partition (--launcher slurm)")
    p.add_argument("--account", default=None, help="SLURM account (--launcher slurm)")
    p.add_argument("--time-min", type=int, default=None, help="SLURM time limit per seed in minutes")
    p.add_argument("--slurm-config", type=Path, default=None, help="a TOML of SlurmConfig fields (launchers/slurm.py)")
    p.add_argument("--sky-config", type=Path, default=None, help="a TOML of SkyConfig fields (launchers/sky.py)")
    p.add_argument("--spot", action="store_true", default=None, help="spot machines (--launcher sky)")
    p.add_argument("--cloud", default=None, help="a cloud SkyPilot knows (--launcher sky)")
    p.add_argument("--region", default=None, help="the cloud's region (--launcher sky)")
    p.add_argument("--no-launch", action="store_true", help="--launcher sky: build and check the tasks only")
    p.add_argument("--against", default=None, help="campaign, run or submission to compare with (default: the "
                   "track's newest baseline campaign of 2+ seeds under --runs-dir, else its calibration)")  # fmt: skip
    p.add_argument("--server", default=None, help="a leaderboard: register the seeds there first, upload each run "
                   "as it ends (a failed one is reported: every seed counts)")  # fmt: skip
    p.add_argument("--token", default=os.environ.get("SPEEDRUN_TOKEN"), help="your API token for --server "
                   "(default: $SPEEDRUN_TOKEN)")  # fmt: skip
    _add_log_to(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("execute", help="run one registered run (what a SLURM job runs; every node of a multi-node one)")
    p.add_argument("run", help="run id or run directory (status registered)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this node")
    p.add_argument("--nnodes", type=int, default=None, help="default: $SPEEDRUN_NNODES, else 1")
    p.add_argument("--node-rank", type=int, default=None, help="default: $SPEEDRUN_NODE_RANK, else 0")
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of node 0 (default: from $SPEEDRUN_MASTER_ADDR)")
    p.set_defaults(func=_execute)

    p = sub.add_parser("status", help="the runs of campaigns: record status, and job state where one runs")
    p.add_argument("campaigns", nargs="*", help="campaign ids or files (default: every campaign under --runs-dir)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.set_defaults(func=_status)

    p = sub.add_parser("resume", help="continue a run from its last checkpoint, timer continuing")
    p.add_argument("run", help="run id or run directory")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.set_defaults(func=_resume)

    p = sub.add_parser("stats", help="mean ± std over runs and the one-sided t-test against the target")
    p.add_argument("runs", nargs="+", help="campaign ids, run ids or run directories (one track)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--csv", type=Path, default=None, help="write the per-run table here")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.set_defaults(func=_stats)

    p = sub.add_parser("compare", help="is B better than A? Welch t-test, effect size with a CI, a verdict")
    p.add_argument("a", help="campaign, run or submission name (the reference)")
    p.add_argument("b", help="campaign, run or submission name (the candidate)")
    p.add_argument("--track", default=None, help="with submission names: their newest campaigns on this track")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    p.set_defaults(func=_compare)

    track = sub.add_parser("track", help="track tools").add_subparsers(dest="track_command", required=True)
    p = track.add_parser("calibrate", help="run the baseline over seeds and set the track's target")
    p.add_argument("track")
    _add_seed_arguments(p)
    p.set_defaults(seeds=3)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--shorter-seeds", type=int, nargs="*", default=[], help="also run the baseline 10%% shorter on "
                   "these seeds: the new target must not be met by it")  # fmt: skip
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("new", help="scaffold a submission: every hook present, commented out, and a README")
    p.add_argument("name", help="folder name under submissions/ (a Python identifier)")
    p.add_argument("--open", action="store_true", help="the open division: a build_model of your own (contract.py)")
    p.set_defaults(func=_new)

    p = sub.add_parser("chat-tune", help="turn a run's base model into a chat model (short SFT, untimed)")
    p.add_argument("run", help="run id or run directory")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="train.jsonl + val.jsonl")
    p.add_argument("--device", default="cpu")
    cpu, gpu = default_config("cpu"), ChatTuneConfig()
    for f in fields(ChatTuneConfig):
        on_cpu, on_gpu = (v if (v := getattr(c, f.name)) is not None else "the model's" for c in (cpu, gpu))
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default) if f.default is not None else int,
                       default=None, help=f"default {on_cpu} on a CPU, {on_gpu} on a GPU")  # fmt: skip
    p.set_defaults(func=_chat_tune)

    p = sub.add_parser("submit", help="upload run bundles to a leaderboard server")
    p.add_argument("runs", nargs="+", help="campaign ids, run ids or run directories (a failed run: its record)")
    p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=os.environ.get("SPEEDRUN_TOKEN"),
                   help="your API token (`speedrun token create` on the server; default: $SPEEDRUN_TOKEN)")  # fmt: skip
    p.add_argument("--description", default="")
    p.add_argument("--link", default="", help="a link to the submission's code or write-up")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.set_defaults(func=_submit)

    p = sub.add_parser("board", help="put runs on a leaderboard on this machine (verified) and chat with the top model")
    p.add_argument("runs", nargs="+", help="run ids or run directories (one track)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--track", default=None, help="the runs' track, a name or a .toml file (default: their record's)")
    p.add_argument("--data-dir", type=Path, default=None, help="the track's shards, for the verifier")
    p.add_argument("--port", type=int, default=8000, help="the board listens on 127.0.0.1 only")
    p.add_argument("--no-serve", action="store_true", help="stop the server at the end (scripts, CI)")
    p.set_defaults(func=_board)

    p = sub.add_parser(
        "runner", help="a runner machine: take reproduction jobs from a leaderboard, re-run in a sandbox"
    )
    p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:8000")
    p.add_argument("--token", required=True, help="a runner token (`speedrun token create NAME --runner`)")
    p.add_argument("--name", default=None, help="how the board names this machine (default: its hostname)")
    p.add_argument("--once", action="store_true", help="take the jobs there are now, then exit")
    p.add_argument("--work-dir", type=Path, default=None, help="where re-runs work (default: a temporary dir)")
    p.set_defaults(func=_runner)

    p = sub.add_parser("reproduce", help="re-run a reproduction's work dir (inside the sandbox; reproducers start it)")
    p.add_argument("work_dir", type=Path, help="holds order.json and source.tar")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("eval", help="CORE and bits per byte of a checkpoint")
    add_eval_arguments(p)
    p.set_defaults(func=_eval)
