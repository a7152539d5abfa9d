"""Launchers: local, SLURM through submitit on a real single-node cluster, SkyPilot tasks checked offline.

    eval "$(bash scripts/slurm_service.sh)"      # a local SLURM (root); without it the SLURM tests skip
    python -m pytest tests/test_launchers.py

The SLURM tests need `submitit` (pip install -e '.[slurm]'), the SkyPilot ones `skypilot`
(pip install -e '.[sky]'); each skips with the reason when its part is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.launchers import sky as sky_launcher
from harness.launchers import slurm
from harness.launchers.track import JobResources, track_needs
from protocol.paths import REPO

# A loop that saves its counter and exits 99 on SIGUSR1 (twice is the same as once), and resumes from the save.
COUNTER = textwrap.dedent("""
    import json, signal, sys, time
    from pathlib import Path
    state, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    resume = "--resume" in sys.argv
    i, total = json.loads(state.read_text()) if resume else (0, 0)
    first = i
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    Path(f"{out}.started").write_text(str(i))
    while i < n:
        if stop:
            state.write_text(json.dumps([i, total]))
            sys.exit(99)
        total = (total * 31 + i) % 1_000_003
        i += 1
        time.sleep(0.05)
    out.write_text(json.dumps({"total": total, "resumed_from": first}))
""")
STEPS = 120  # 6 s uninterrupted
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "UNKNOWN"}


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def finished(job_ids: list[str]) -> dict[str, str] | None:
    """The jobs' states once none is pending or running any more."""
    states = slurm.status(job_ids)
    return states if all(s in FINAL for s in states.values()) else None


# ------------------------------------------------------------------------------------------ tracks, local


def test_track_needs_read_the_tracks_hardware_and_data():
    gpt2 = track_needs("gpt2")
    assert gpt2.resources == JobResources(nodes=1, gpus_per_node=8, gpu_model="H100", cpus_per_task=64, time_min=240)
    assert (gpt2.data.source, gpt2.data.num_train_shards) == ("climbmix", 170)
    books = track_needs("cpu-books", time_min=10)
    assert books.resources == JobResources(nodes=1, gpus_per_node=0, gpu_model=None, cpus_per_task=2, time_min=10)
    assert books.data.source == "local" and books.data.local_dir == (REPO.parent / "shared/data/pretrain").resolve()
    assert track_needs("cpu").data.num_train_shards == 2  # shards 0, 1 and the val shard


def test_slurm_config_reads_toml_and_flags_override_it(tmp_path):
    path = tmp_path / "slurm.toml"
    path.write_text(
        'partition = "h100"\naccount = "proj"\nsetup = ["module load cuda"]\n[sbatch]\nconstraint = "h100"\n'
    )
    config = slurm.SlurmConfig.from_toml(path, partition="debug", account=None)
    assert (config.partition, config.account, config.setup) == ("debug", "proj", ("module load cuda",))
    assert config.sbatch == {"constraint": "h100"}
    path.write_text('partion = "h100"\n')
    with pytest.raises(ValueError, match="unknown keys \\['partion'\\]"):
        slurm.SlurmConfig.from_toml(path)


def test_missing_extras_fail_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    monkeypatch.setitem(sys.modules, "sky", None)
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[slurm\]'"):
        slurm.submit([["true"]], resources=JobResources(), config=slurm.SlurmConfig())
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[sky\]'"):
        sky_launcher.build_tasks([["true"]], needs=track_needs("cpu-books"), config=sky_launcher.SkyConfig())


def test_checkpoint_stops_the_command_and_requeues_the_resume_command(tmp_path):
    pytest.importorskip("submitit", reason="submitit not installed: pip install -e '.[slurm]'")
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    out = tmp_path / "out.json"
    command = [sys.executable, str(script), str(tmp_path / "state.json"), str(out), "100000"]
    job = slurm.CommandJob(command, command + ["--resume"], grace_s=10)
    job._child = subprocess.Popen(command, start_new_session=True)
    wait_for(lambda: Path(f"{out}.started").exists(), 30, "the command to start")
    delayed = job.checkpoint()
    assert job._child.wait(5) == 99  # saved its counter and stopped
    assert delayed.function.command == command + ["--resume"] and delayed.function._child is None


# ------------------------------------------------------------------------------------------ SLURM, live


@pytest.fixture(scope="module")
def cluster():
    if not os.environ.get("SPEEDRUN_TEST_SLURM"):
        pytest.skip('no SLURM for tests: eval "$(bash scripts/slurm_service.sh)" sets SPEEDRUN_TEST_SLURM=1')
    pytest.importorskip("submitit", reason="submitit not installed: pip install -e '.[slurm]'")
    if shutil.which("sinfo") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("SPEEDRUN_TEST_SLURM is set but `sinfo` fails: is slurmctld running? (scripts/slurm_service.sh)")


def slurm_config(tmp_path) -> slurm.SlurmConfig:
    # The job-side submitit unpickles CommandJob from this checkout, whatever else is installed.
    return slurm.SlurmConfig(log_dir=tmp_path / "slurm", grace_s=20, setup=(f"export PYTHONPATH={REPO}",))


def test_slurm_array_runs_one_job_per_seed(cluster, tmp_path):
    write_seed = (
        "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2] + os.environ['SPEEDRUN_NODE_RANK'])"
    )
    seeds = [42, 43, 44]
    commands = [[sys.executable, "-c", write_seed, str(tmp_path / f"seed_{s}.txt"), str(s)] for s in seeds]
    job_ids = slurm.submit(
        commands, resources=JobResources(time_min=5), config=slurm_config(tmp_path), job_name="t-array"
    )
    array_ids = {job_id.split("_")[0] for job_id in job_ids}
    assert len(job_ids) == 3 and len(array_ids) == 1, f"one job array of three, got {job_ids}"
    states = wait_for(lambda: finished(job_ids), 120, "the array")
    assert set(states.values()) == {"COMPLETED"}, states
    assert [(tmp_path / f"seed_{s}.txt").read_text() for s in seeds] == ["420", "430", "440"]  # seed, node rank 0


def test_preempted_job_is_requeued_with_its_resume_command_and_ends_as_if_uninterrupted(cluster, tmp_path):
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    reference = tmp_path / "reference.json"
    subprocess.run([sys.executable, str(script), str(tmp_path / "ref_state"), str(reference), str(STEPS)], check=True)

    out = tmp_path / "out.json"
    command = [sys.executable, str(script), str(tmp_path / "state.json"), str(out), str(STEPS)]
    [job_id] = slurm.submit(
        [command],
        resources=JobResources(time_min=5),
        config=slurm_config(tmp_path),
        resume_commands=[command + ["--resume"]],
        job_name="t-preempt",
    )
    wait_for(lambda: Path(f"{out}.started").exists(), 60, "the job to start")
    time.sleep(1.0)
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    wait_for(lambda: slurm.status([job_id])[job_id] == "COMPLETED", 120, "the requeued job to complete")
    result = json.loads(out.read_text())
    assert 0 < result["resumed_from"] < STEPS, f"the second run started from the saved counter: {result}"
    assert result["total"] == json.loads(reference.read_text())["total"]
    restarts = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts


def test_status_reports_running_cancelled_failed_and_unknown_jobs(cluster, tmp_path):
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    sleeping, failing = slurm.submit(
        [sleep, fail], resources=JobResources(time_min=5), config=slurm_config(tmp_path), job_name="t-status"
    )
    wait_for(lambda: slurm.status([sleeping])[sleeping] == "RUNNING", 60, "the sleeping job to run")
    subprocess.run(["scancel", sleeping], check=True)
    states = wait_for(lambda: finished([sleeping, failing, "999999"]), 60, "cancelled and failed")
    assert states == {sleeping: "CANCELLED", failing: "FAILED", "999999": "UNKNOWN"}


# ------------------------------------------------------------------------------------------ SkyPilot, offline


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    # SkyPilot keeps its state and catalogs under ~/.sky from import on: a throwaway home for the tests.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("sky_home")))
        yield pytest.importorskip("sky", reason="skypilot not installed: pip install -e '.[sky]'")


RUN = ["speedrun", "run", "baseline", "--track", "gpt2", "--nproc", "8", "--data-dir", sky_launcher.DATA_DIR]


def test_sky_gpt2_tasks_ask_for_8_h100_on_spot_and_download_the_shards(sky):
    commands = [RUN + ["--seed-list", str(s)] for s in (42, 43)]
    resumes = [["speedrun", "resume", f"RUN_{s}", "--runs-dir", sky_launcher.RUNS_DIR] for s in (42, 43)]
    config = sky_launcher.SkyConfig(use_spot=True, runs_bucket="s3://speedrun-test-runs")
    tasks = sky_launcher.build_tasks(
        commands, needs=track_needs("gpt2"), config=config, resume_commands=resumes, name="gpt2-baseline"
    )
    assert [t.name for t in tasks] == ["gpt2-baseline-0", "gpt2-baseline-1"]
    for task, command, resume in zip(tasks, commands, resumes, strict=True):
        back = sky_launcher.check_task(task)
        [resources] = back.resources
        assert resources.accelerators == {"H100": 8} and resources.use_spot
        assert resources.job_recovery["strategy"] == "FAILOVER"
        assert back.num_nodes == 1 and back.workdir == str(REPO)
        assert "speedrun data download --num-shards 170 --data-dir /speedrun/data" in back.setup
        assert "uv pip install -q -e ." in back.setup
        assert f"exec {' '.join(command)}" in back.run and f"exec {' '.join(resume)}" in back.run
        assert "export SPEEDRUN_NODE_RANK=$SKYPILOT_NODE_RANK" in back.run
        assert back.storage_mounts[sky_launcher.RUNS_DIR].mode == sky.StorageMode.MOUNT_CACHED
        assert not back.file_mounts


def test_sky_cpu_books_task_is_cpu_only_on_demand_and_uploads_its_corpus(sky):
    needs = track_needs("cpu-books")
    if not needs.data.local_dir.is_dir():
        pytest.skip(f"cpu-books corpus not found at {needs.data.local_dir} (set up ../shared)")
    command = ["speedrun", "run", "baseline", "--track", "cpu-books", "--data-dir", sky_launcher.DATA_DIR]
    [task] = sky_launcher.build_tasks([command], needs=needs, config=sky_launcher.SkyConfig())
    back = sky_launcher.check_task(task)
    [resources] = back.resources
    assert resources.accelerators is None and not resources.use_spot and resources.cpus == "2+"
    assert back.file_mounts == {sky_launcher.DATA_DIR: str(needs.data.local_dir)}
    assert "data download" not in back.setup and back.run.endswith(f"exec {' '.join(command)}")
    assert "speedrun resume" not in back.run


def test_sky_git_checkout_cloud_region_and_data_bucket_replace_the_workdir_and_the_download(sky):
    config = sky_launcher.SkyConfig(
        workdir=None,
        git_url="https://example.org/speedrun.git",
        git_ref="v1",
        data_bucket="gs://speedrun-test-shards",
        cloud="gcp",
        region="us-central1",
    )
    [task] = sky_launcher.build_tasks([RUN], needs=track_needs("gpt2"), config=config)
    back = sky_launcher.check_task(task)
    [resources] = back.resources
    assert (str(resources.cloud), resources.region) == ("GCP", "us-central1")
    assert back.workdir is None and "git checkout -q v1" in back.setup and "data download" not in back.setup
    assert back.run.startswith("set -eo pipefail\ncd speedrun\n")
    assert back.storage_mounts[sky_launcher.DATA_DIR].source == "gs://speedrun-test-shards"


def test_sky_check_task_refuses_what_skypilot_refuses(sky, tmp_path):
    [task] = sky_launcher.build_tasks(
        [RUN], needs=track_needs("gpt2"), config=sky_launcher.SkyConfig(), name="Bad name"
    )
    with pytest.raises(ValueError, match="Invalid task name"):
        sky_launcher.check_task(task)
    [task] = sky_launcher.build_tasks(
        [RUN], needs=track_needs("gpt2"), config=sky_launcher.SkyConfig(workdir=tmp_path / "gone")
    )
    with pytest.raises(ValueError, match="gone"):
        sky_launcher.check_task(task)


# ---------------------------------------------------------------------------------- speedrun run --launcher slurm


@pytest.mark.slow
def test_a_slurm_campaign_runs_every_seed_to_a_record_and_a_preempted_seed_resumes_like_uninterrupted(
    cluster, tmp_path, monkeypatch
):
    """`speedrun run --seeds 3 --launcher slurm` on the tiny track; one seed gets SLURM's USR1 notice mid-run."""
    from protocol.events import read_events
    from protocol.record import find_campaign, read_campaign, read_record
    from tests.test_harness import write_track

    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    track, runs = write_track(tmp_path, steps=60), tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = tmp_path / "slurm.toml"
    config.write_text(f'log_dir = "{tmp_path / "slurm"}"\ngrace_s = 120\n')
    cmd = [
        sys.executable,
        "-m",
        "speedrun",
        "run",
        "baseline",
        "--track",
        str(track),
        "--runs-dir",
        str(runs),
        "--seed-list",
        "1",
        "2",
        "3",
        "--launcher",
        "slurm",
        "--slurm-config",
        str(config),
        "--campaign-id",
        "sl",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    campaign = read_campaign(find_campaign("sl", runs))
    assert campaign.launcher == "slurm" and list(campaign.jobs) == ["sl-s1", "sl-s2", "sl-s3"]
    first = campaign.jobs["sl-s1"]
    events = runs / "sl-s1" / "events.jsonl"
    wait_for(lambda: events.is_file() and sum(e.event == "step" for e in read_events(events)) >= 10, 600, "10 steps")
    subprocess.run(["scancel", "--signal=USR1", first], check=True)
    wait_for(lambda: finished(list(campaign.jobs.values())), 1800, "the campaign's jobs")
    records = {r: read_record(runs / r) for r in campaign.run_ids}
    assert all(r.status == "completed" for r in records.values()), {k: (r.status, r.error) for k, r in records.items()}
    preempted = records["sl-s1"]
    assert preempted.resumed == 1 and preempted.interruptions[0].status == "preempted"
    status = subprocess.run([sys.executable, "-m", "speedrun", "status", "sl", "--runs-dir", str(runs)], env=env,
                            capture_output=True, text=True).stdout  # fmt: skip
    assert status.count("completed") == 3 and first in status
    # The preempted seed ends with the losses and val bpb of an uninterrupted run of the same seed.
    again = subprocess.run([sys.executable, "-m", "speedrun", "run", "baseline", "--track", str(track), "--runs-dir",
                            str(runs), "--seed-list", "1", "--campaign-id", "local"], env=env, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr
    reference = read_record(runs / "local-s1")
    losses = [
        [e.loss for e in read_events(runs / r / "events.jsonl") if e.event == "step"] for r in ("sl-s1", "local-s1")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert preempted.result.val_bpb == pytest.approx(reference.result.val_bpb, rel=1e-6)
