"""scripts/cpu_speedrun.sh end to end, as a newcomer runs it, on a tiny track: training, statistics, a short
chat tune, the run verified on a local board, and a chat reply streamed from that run's chat-tuned model.

The tiny track's full horizon (14 steps) keeps the run official: the board verifies only official runs,
so a --max-steps smoke run would be rejected there.
"""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import DATA, PRETRAIN, REPO
from tests.test_harness import cache, write_track  # noqa: F401 -- the tokenizer cache fixture (autouse)

READY_TIMEOUT_S = 420  # ~2 minutes on a quiet 2-core machine; shared machines are several times slower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_chat_data(tmp_path):
    src = DATA / "chat"
    if not (src / "train.jsonl").is_file():
        pytest.skip(f"no chat data at {src} (set SPEEDRUN_SHARED)")
    out = tmp_path / "chat"
    out.mkdir()
    for split, n in (("train", 400), ("val", 32)):
        (out / f"{split}.jsonl").write_text("".join((src / f"{split}.jsonl").read_text().splitlines(True)[:n]))
    return out


class Output:
    """The script's output, read on a thread as it comes, so the test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, proc: subprocess.Popen, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = next((line for line in self.lines if line.startswith(prefix)), None)
            if found is not None:
                return found
            if proc.poll() is not None:
                self._thread.join(5)
                break
            time.sleep(0.5)
        pytest.fail(f"no line starting {prefix!r}; the script said:\n" + "\n".join(self.lines[-40:]))


def test_the_speedrun_script_ends_with_a_verified_run_on_a_board_and_a_chat_that_streams(tmp_path, pretrain_dir):
    track_file = write_track(tmp_path)
    port, runs = free_port(), tmp_path / "runs"
    env = os.environ | {"PYTHONPATH": str(REPO), "RUNS_DIR": str(runs), "TRACK": str(track_file)}
    env.pop("DATABASE_URL", None)
    args = [PRETRAIN, "--chat-data", small_chat_data(tmp_path), "--chat-steps", "3", "--port", port]
    # Its own process group, as in a terminal: Ctrl-C reaches the script and everything it started.
    proc = subprocess.Popen(["bash", "scripts/cpu_speedrun.sh", *map(str, args)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    output = Output(proc)
    try:
        chat_line = output.wait_for("chat:  http", proc, READY_TIMEOUT_S)
        url = f"http://127.0.0.1:{port}"
        [run_line] = [line for line in output.lines if line.startswith("run:   ")]
        run_id = run_line.removeprefix(f"run:   {url}/runs/")
        assert f"{run_id}: verified" in output.lines, output.lines
        assert chat_line.startswith(f"chat:  {url}/chat   (run {run_id}, chat-tuned)"), chat_line
        assert any(line.startswith("==> [") and "3/3" in line for line in output.lines)  # the progress through

        run = requests.get(f"{url}/api/runs/{run_id}", timeout=30).json()
        assert run["verification"] == "verified", run["verification_detail"]
        assert requests.get(f"{url}/runs/{run_id}", timeout=30).status_code == 200
        health = requests.get(f"{url}/health", timeout=30).json()
        assert health["run_id"] == run_id and health["mode"] == "chat", health
        child = next(p for p in runs.iterdir() if p.name.startswith(f"{run_id}-chat-"))
        assert json.loads((child / "record.json").read_text())["chat_tune"]["steps"] == 3
        chat_page = requests.get(f"{url}/chat", timeout=30).text
        assert f'href="/runs/{run_id}"' in chat_page

        body = {"model": health["model"], "messages": [{"role": "user", "content": "Name a colour."}],
                "stream": True, "max_tokens": 12, "temperature": 1.0, "seed": 1}  # fmt: skip
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            events = [line.removeprefix("data: ") for line in response.iter_lines(decode_unicode=True) if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert "".join(p for p in pieces if p) and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the board stops its server
            proc.wait(60)
        except ProcessLookupError:
            pass  # already gone
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, output.lines[-20:]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/tracks", timeout=5)  # nothing left listening
