"""A runner machine: `speedrun runner --server URL --token T` takes reproduction jobs and re-runs them in a sandbox.

    serve_jobs("http://127.0.0.1:8000", token)              # register, then claim, re-run, report, forever
    serve_jobs(server, token, once=True)                      # the jobs there are now, then return

For tracks the server cannot run itself (GPU tracks), and to add capacity on CPU tracks. The machine
registers its hardware (protocol.reproduce.this_machine: psutil, NVML when present); the server hands
it only jobs of tracks whose hardware it has. For each job it prepares the track's data and tokenizer
here (the frozen harness code, outside the sandbox: `speedrun run`'s own preparation), fetches the
submission's source, re-runs it behind the sandbox's walls (sandbox/bwrap.py) exactly as the server's
worker does, and posts a protocol.reproduce.ReproduceResult; the server compares it with the claim.

A claim is a lease: every heartbeat (a third of the lease) renews it and reports progress; a machine
that vanishes stops renewing, its lease expires and the job goes back to the queue. When the server
answers that the job is no longer this machine's (403/409: expired and taken, or requeued by an admin),
the re-run is cancelled. The token is a runner token (`speedrun token create NAME --runner`); it can
post only for the jobs it holds.
"""

import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path

import requests

import sandbox
from harness import provenance
from harness.campaign import prepare_data, prepare_tokenizer
from protocol.paths import track_data_dir
from protocol.reproduce import (
    Machine,
    ReproduceJob,
    ReproduceResult,
    WorkOrder,
    collect_result,
    prepare_work_dir,
    progress,
    rerun_command,
    sandbox_args,
    this_machine,
)
from protocol.tracks import Track, track_from_dict

log = logging.getLogger("harness.runner_machine")
TIMEOUT_S = 120.0  # one API call


class RunnerError(RuntimeError):
    """The server refused a call; the message carries its status and detail."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Server:
    """The leaderboard's runner API, as this machine's token sees it."""

    def __init__(self, url: str, token: str):
        self.url, self.headers = url.rstrip("/"), {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, ok=(200, 201), **kwargs) -> requests.Response:
        response = requests.request(method, self.url + path, headers=self.headers, timeout=TIMEOUT_S, **kwargs)
        if response.status_code not in ok:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            raise RunnerError(
                response.status_code, f"{method} {path}: the server answered {response.status_code}: {detail}"
            )
        return response

    def register(self, name: str, machine: Machine) -> int:
        body = {"name": name, "machine": machine.model_dump()}
        return self.call("POST", "/api/runners", json=body).json()["runner_id"]

    def claim(self, runner_id: int) -> ReproduceJob | None:
        response = self.call("POST", f"/api/runners/{runner_id}/claim", ok=(200, 204))
        return None if response.status_code == 204 else ReproduceJob.model_validate(response.json())

    def source(self, runner_id: int, job_id: int) -> bytes:
        return self.call("GET", f"/api/runners/{runner_id}/jobs/{job_id}/source").content

    def heartbeat(self, runner_id: int, job_id: int, progress_note: str | None) -> bool:
        """Renew the lease; False once the job is no longer this machine's (the re-run is then cancelled)."""
        try:
            self.call("POST", f"/api/runners/{runner_id}/jobs/{job_id}/heartbeat", json={"progress": progress_note})
        except RunnerError as e:
            log.warning("job %s: %s", job_id, e)
            return e.status not in (403, 404, 409)  # not this machine's any more: cancel; else keep going
        except requests.RequestException as e:
            log.warning("job %s: heartbeat failed (%s); the lease runs on", job_id, e)
        return True

    def post_result(self, runner_id: int, job_id: int, result: ReproduceResult) -> dict:
        path = f"/api/runners/{runner_id}/jobs/{job_id}/result"
        return self.call("POST", path, json=result.model_dump(mode="json")).json()


def local_resources(track: Track) -> tuple[Path, Path]:
    """(data dir, tokenizer dir) of the track on this machine, prepared as `speedrun run` prepares them."""
    data_dir = track_data_dir(track)
    files = prepare_data(track, data_dir)
    data_hash = provenance.shards_hash(files)
    if data_hash != track.dataset.content_hash:
        raise ValueError(
            f"this machine's shards in {data_dir} have content hash {data_hash[:12]}…, track {track.name} pins "
            f"{track.dataset.content_hash[:12]}…: put the track's data there"
        )
    return data_dir, prepare_tokenizer(track, track.dataset.splits(files)["train"], data_hash)


def run_job(server: Server, runner_id: int, job: ReproduceJob, work_root: Path | None) -> ReproduceResult:
    """Re-run one claimed job in the sandbox; the result to post (a failure to prepare is a failed result)."""
    machine, t0 = this_machine(), time.monotonic()
    track = track_from_dict(job.track)
    scratch = Path(tempfile.mkdtemp(prefix=f"reproduce-{job.job_id}-", dir=work_root))
    try:
        try:
            data_dir, tokenizer_dir = local_resources(track)
            source = server.source(runner_id, job.job_id)
        except (ValueError, OSError, RunnerError) as e:
            why = f"the runner could not prepare the re-run: {e}"
            return ReproduceResult(job_id=job.job_id, status="failed", reason=why, wall_s=0.0, machine=machine)
        order = WorkOrder(job=job, data_dir=str(data_dir), tokenizer_dir=str(tokenizer_dir))
        work, out = scratch / "work", scratch / "rerun.log"
        work.mkdir()
        prepare_work_dir(work, order, source)
        with open(out, "wb") as f:
            done = sandbox.run(
                rerun_command(work),
                **sandbox_args(order, work),
                limits=sandbox.Limits(wall_s=track.reproduce.wall_s if track.reproduce else 3600.0),
                stdout=f,
                stderr=f,
                tick=lambda: server.heartbeat(runner_id, job.job_id, progress(work, order)),
                tick_s=max(1.0, job.lease_s / 3),
            )
        result = collect_result(
            work, order, status=done.status, reason=done.reason, wall_s=done.wall_s, machine=machine, log=out
        )
        log.info("job %s (%s): %s in %.0f s", job.job_id, job.run_id, done.status, time.monotonic() - t0)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def serve_jobs(
    server_url: str,
    token: str,
    *,
    name: str | None = None,
    once: bool = False,
    work_root: Path | None = None,
    poll_s: float = 10.0,
) -> int:
    """Register this machine, then take, re-run and report jobs (until none is left, with `once`); how many."""
    why = sandbox.available()
    if why is not None:
        raise ValueError(f"this machine cannot run reproductions in a sandbox: {why}")
    server = Server(server_url, token)
    runner_id = server.register(name or socket.gethostname(), this_machine())
    done = 0
    while True:
        try:
            job = server.claim(runner_id)
        except requests.RequestException as e:  # the server is away for a moment: ask again later
            log.warning("runner: cannot reach %s (%s)", server_url, e)
            job = None
        if job is None:
            if once:
                return done
            time.sleep(poll_s)
            continue
        result = run_job(server, runner_id, job, work_root)
        try:
            answer = server.post_result(runner_id, job.job_id, result)
            log.info("job %s: the server says %s", job.job_id, answer.get("status"))
        except (RunnerError, requests.RequestException) as e:  # the lease expired meanwhile, or the server is away:
            log.warning("job %s: result not taken: %s", job.job_id, e)  # the job returns to the queue either way
        done += 1
