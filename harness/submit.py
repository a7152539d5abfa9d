"""`speedrun submit RUN_DIR... --server URL --token T`: pack each run as a bundle and upload it.

    from harness.submit import submit
    submit(["runs/20260101-cpu-books-baseline-s0"], "http://127.0.0.1:8000", token, description="...")

A bundle is a .tar.gz of the members protocol/bundle.py names, flat at the top level. Uploading the
same run twice is harmless: the server answers 200 with the run it already has.
"""

import io
import json
import tarfile
from pathlib import Path

import requests

from protocol.bundle import OPTIONAL, SOURCE, member_paths, source_tar
from protocol.record import read_record, read_spec


class SubmitError(RuntimeError):
    """The server refused a bundle; the message carries its status and detail."""


def pack(run_dir: str | Path) -> bytes:
    """The bundle of one run directory as .tar.gz bytes."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    members = member_paths(run_dir, record)
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
        if record.submission.division == "open":  # its weights need its code: the copy the run trained from
            data = source_tar(read_spec(run_dir).path(run_dir, "submission"))
            info = tarfile.TarInfo(SOURCE)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
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
    """Upload each run; returns the server's run for each (raises SubmitError on the first refusal)."""
    out = []
    for run_dir in run_dirs:
        response = requests.post(
            server.rstrip("/") + "/api/runs",
            headers={"Authorization": f"Bearer {token}"},
            files={"bundle": ("bundle.tar.gz", pack(run_dir), "application/gzip")},
            data={"description": description, "link": link},
            timeout=timeout_s,
        )
        if response.status_code not in (200, 201):
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            raise SubmitError(f"{run_dir}: the server answered {response.status_code}: {json.dumps(detail)}")
        run = response.json()
        verb = "uploaded" if response.status_code == 201 else "already there"
        print(
            f"{run['run_id']}: {verb}, verification {run['verification']} ({server.rstrip('/')}/runs/{run['run_id']})"
        )
        out.append(run)
    return out
