"""A leaderboard server from the runner's side: register a campaign's seeds, then upload its runs.

    from harness.submit import register_campaign, submit
    campaign_id = register_campaign(server, token, track="cpu-books", submission="my_idea", seeds=[42, 43])
    submit(["runs/reg-…-s42", "runs/reg-…-s43"], server, token, description="...")

Registering first (`speedrun run --server URL --token T` does) makes every seed count: the server issues
the run ids (CAMPAIGN-sSEED, so the campaign takes the server's name) and a registered run that never
arrives, or ends failed, killed, diverged, invalid or stopped, is a miss there. A completed run is
uploaded as a bundle, a .tar.gz of the members protocol/bundle.py names, flat at the top level; a run
that ended a miss is reported by its record.json alone. Uploading the same run twice is harmless: the
server answers 200 with the run it already has.
"""

import io
import json
import tarfile
from pathlib import Path

import requests

from protocol.bundle import OPTIONAL, member_paths
from protocol.record import MISS_STATUSES, RECORD_FILE, read_record


class SubmitError(RuntimeError):
    """The server refused a request; the message carries its status and detail."""


def _refusal(what: str, response: requests.Response) -> SubmitError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:500]
    return SubmitError(f"{what}: the server answered {response.status_code}: {json.dumps(detail)}")


def register_campaign(
    server: str, token: str, *, track: str, submission: str, seeds: list[int], timeout_s: float = 60.0
) -> str:
    """Register the seeds' runs with the server before running them; returns the campaign id it issued."""
    response = requests.post(
        server.rstrip("/") + "/api/registrations",
        headers={"Authorization": f"Bearer {token}"},
        json={"track": track, "submission": submission, "seeds": seeds},
        timeout=timeout_s,
    )
    if response.status_code != 201:
        raise _refusal(f"registering {submission} on {track}", response)
    body = response.json()
    campaign_id = body["campaign_id"]
    issued = {r["seed"]: r["run_id"] for r in body["runs"]}
    if issued != {s: f"{campaign_id}-s{s}" for s in seeds}:
        raise SubmitError(f"the server issued run ids {sorted(issued.values())}, not one {campaign_id}-sSEED a seed")
    return campaign_id


def pack(run_dir: str | Path) -> bytes:
    """The bundle of one run directory as .tar.gz bytes."""
    run_dir = Path(run_dir)
    members = member_paths(run_dir, read_record(run_dir))
    if not members["model.safetensors"].is_file():
        raise FileNotFoundError(
            f"{run_dir} has no final checkpoint with model.safetensors: only a finished run can be submitted"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, path in members.items():
            if path.is_file():
                tar.add(path, arcname=name, recursive=False)
            elif name not in OPTIONAL:
                raise FileNotFoundError(f"{run_dir} lacks {path.relative_to(run_dir)}: the bundle needs it")
    return buf.getvalue()


def submit(
    run_dirs: list[str | Path],
    server: str,
    token: str,
    *,
    description: str = "",
    link: str = "",
    timeout_s: float = 600.0,
) -> list[dict]:
    """Upload each run (a miss as its record alone); returns the server's run for each (raises SubmitError on
    the first refusal)."""
    out = []
    for run_dir in run_dirs:
        if read_record(run_dir).status in MISS_STATUSES:
            files = {"record": (RECORD_FILE, (Path(run_dir) / RECORD_FILE).read_bytes(), "application/json")}
        else:
            files = {"bundle": ("bundle.tar.gz", pack(run_dir), "application/gzip")}
        response = requests.post(
            server.rstrip("/") + "/api/runs",
            headers={"Authorization": f"Bearer {token}"},
            files=files,
            data={"description": description, "link": link},
            timeout=timeout_s,
        )
        if response.status_code not in (200, 201):
            raise _refusal(str(run_dir), response)
        run = response.json()
        verb = "uploaded" if response.status_code == 201 else "already there"
        print(
            f"{run['run_id']}: {verb}, verification {run['verification']} ({server.rstrip('/')}/runs/{run['run_id']})"
        )
        out.append(run)
    return out
