"""`speedrun board RUN...`: your runs on a leaderboard on this machine, verified, and a chat with the top one.

    speedrun board runs/RUN_ID [--data-dir DIR] [--port 8000] [--no-serve]

What a submitter does by hand against a shared board, in order, with no token to copy: start the board
(`speedrun serve` on 127.0.0.1, its SQLite database and uploads under RUNS_DIR/board), make an admin
token for the local user, `speedrun submit` the runs, run the real verifier once (`speedrun verify`:
every check, val bpb recomputed), load the board's top model (the run's chat-tuned child from the runs
directory when there is one, `speedrun chat-tune`) and ask it one question; then print the URLs of the
run pages and the chat and serve until Ctrl-C. --no-serve stops the server when that is done (scripts, CI).

This is the runner side: it talks to the service the way any submitter does, through its commands and
HTTP, and never imports it. Running it again is harmless: an uploaded run answers "already there".
"""

import getpass
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.submit import submit
from protocol.paths import REPO, track_data_dir
from protocol.record import RunRecord, read_record, read_spec
from protocol.tracks import BUILTIN_DIR, load_track

BOARD_DIR = "board"  # under the runs directory
READY_TIMEOUT_S = 300.0  # the server imports torch and migrates its database: slow on a busy 2-core machine
QUESTION = "What is the capital of France?"


@dataclass
class LocalBoard:
    url: str
    env: dict  # what the service's commands read: LEADERBOARD_* (leaderboard/settings.py, leaderboard/chat.py)
    log_path: Path
    server: subprocess.Popen | None = None


def board_env(runs_dir: Path, track, track_arg: str, data_dir: Path, tokenizer_dir: Path) -> dict:
    """The service's settings for a board of `track` kept under runs_dir/board, serving chat models from runs_dir."""
    storage = (runs_dir / BOARD_DIR).resolve()
    env = os.environ | {
        "LEADERBOARD_DATABASE_URL": f"sqlite:///{storage / 'leaderboard.db'}",  # not the user's DATABASE_URL
        "LEADERBOARD_STORAGE_DIR": str(storage),
        "LEADERBOARD_TRACK_RESOURCES": json.dumps(
            {track.name: {"data_dir": str(Path(data_dir).resolve()), "tokenizer_dir": str(tokenizer_dir.resolve())}}
        ),
        "LEADERBOARD_CHAT_RUNS_DIR": str(runs_dir.resolve()),
        "LEADERBOARD_CHAT_TRACK": track.name,
        # A re-run here, on the machine that made the run, would only repeat it at twice the wait: a shared
        # board re-runs submissions (its run pages then say so, and that a record waits for one).
        "LEADERBOARD_REPRODUCE_LOCALLY": "false",
    }
    if Path(track_arg).is_file():  # a track of its own .toml, not one of protocol/tracks/
        env["LEADERBOARD_TRACK_FILES"] = json.dumps([str(Path(track_arg).resolve())])
    return env


def _speedrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "speedrun", *args]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(board: LocalBoard, port: int) -> None:
    """`speedrun serve` on 127.0.0.1 only, its output in the board's log; returns when it answers."""
    if not _port_free(port):
        raise ValueError(f"port {port} on 127.0.0.1 is taken (another board?): stop it, or pass --port N")
    board.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(board.log_path, "a") as log:  # the server keeps its own descriptor
        board.server = subprocess.Popen(_speedrun("serve", "--host", "127.0.0.1", "--port", str(port)), env=board.env,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if board.server.poll() is not None:
            tail = " | ".join(board.log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(f"the board's server exited with code {board.server.returncode}: {tail}")
        try:
            if requests.get(f"{board.url}/api/tracks", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the board's server did not answer within {READY_TIMEOUT_S:.0f}s: see {board.log_path}")


def stop(board: LocalBoard) -> None:
    if board.server is not None and board.server.poll() is None:
        board.server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            board.server.wait(15)
        except subprocess.TimeoutExpired:
            board.server.kill()
            board.server.wait()


def make_token(board: LocalBoard) -> str:
    """An admin token for the local user (admin: it also reloads the chat model); made fresh each time."""
    out = subprocess.run(_speedrun("token", "create", getpass.getuser(), "--admin"), env=board.env, cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def verdicts(board: LocalBoard, records: list[RunRecord]) -> list[tuple[RunRecord, str, list[str]]]:
    """(record, verification status, reasons) of each run, as the board has them."""
    out = []
    for record in records:
        run = requests.get(f"{board.url}/api/runs/{record.run_id}", timeout=30).json()
        out.append((record, run["verification"], run["verification_detail"].get("reasons") or []))
    return out


def ask(board: LocalBoard, token: str, question: str = QUESTION) -> dict | None:
    """Load the board's top model into the chat, ask it `question` and print the reply as it streams.

    Returns /health's description of the served model, or None (with the reason printed) when none is served.
    """
    reload = requests.post(f"{board.url}/api/admin/chat/reload", headers={"Authorization": f"Bearer {token}"},
                           timeout=READY_TIMEOUT_S).json()  # fmt: skip
    health = requests.get(f"{board.url}/health", timeout=30)
    if health.status_code != 200:
        print(f"chat: no model is served ({reload.get('error') or health.json().get('error') or 'no verified run'})")
        return None
    served = health.json()
    body = {"model": served["model"], "messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": 48, "temperature": 0.7}  # fmt: skip
    print(f"\nyou:   {question}\nmodel: ", end="", flush=True)
    with requests.post(f"{board.url}/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        if response.status_code != 200:
            print(f"\nchat: the model did not answer ({response.status_code}: {response.text[:300]})")
            return None
        for line in response.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                print(f"\nchat: the model stopped: {chunk['error']['message']}")
                return None
            for choice in chunk.get("choices", []):
                print(choice["delta"].get("content", ""), end="", flush=True)
    print("\n")
    return served


def board(
    run_dirs: list[Path],
    *,
    track_arg: str | None = None,
    data_dir: Path | None = None,
    port: int = 8000,
    serve: bool = True,
) -> bool:
    """Put the runs on the local board and chat with its top model; True if every run verified and the chat answered."""
    records = [read_record(d) for d in run_dirs]
    names = {r.track.name for r in records}
    if len(names) != 1:
        raise ValueError(f"the runs are of several tracks ({', '.join(sorted(names))}): put one track's runs up")
    name = records[0].track.name
    if track_arg is None and not (BUILTIN_DIR / f"{name}.toml").is_file():
        raise ValueError(f"the runs are of track {name}, not a built-in one: pass --track with its .toml file")
    track_arg = track_arg or name
    track = load_track(track_arg)
    if track.name != name:
        raise ValueError(f"--track {track_arg} is track {track.name}, the runs are of {name}: pass their track")
    tokenizer_dir = run_dirs[0] / read_spec(run_dirs[0]).tokenizer_dir
    runs_dir = run_dirs[0].parent
    env = board_env(runs_dir, track, track_arg, track_data_dir(track, data_dir), tokenizer_dir)
    url = f"http://127.0.0.1:{port}"
    local = LocalBoard(url=url, env=env, log_path=runs_dir / BOARD_DIR / "serve.log")
    ok = False
    # Ctrl-C and `kill` stop the server, also when started in the background (where SIGINT comes ignored).
    old_handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"board: starting the server on {url} (database and uploads in {runs_dir / BOARD_DIR})")
        start(local, port)
        token = make_token(local)
        submit(run_dirs, url, token, description="local board")
        print("board: verifying (every check; the server recomputes val bpb with the frozen eval)")
        subprocess.run(_speedrun("verify"), env=env, cwd=REPO, check=True)
        results = verdicts(local, records)
        for record, status, reasons in results:
            print(f"{record.run_id}: {status}" + (f" ({'; '.join(reasons)})" if reasons else ""))
        print("chat: loading the board's top model")
        served = ask(local, token)
        ok = served is not None and all(status == "verified" for _, status, _ in results)
        _print_urls(local, records, served)
        if serve:
            print("Serving until Ctrl-C.", flush=True)
            local.server.wait()
        else:
            again = ["speedrun", "board", *map(str, run_dirs)]
            again += ["--track", track_arg] if track_arg != name else []
            again += ["--data-dir", str(data_dir)] if data_dir else []
            again += ["--port", str(port)] if port != 8000 else []
            print(f"--no-serve: the server stops; `{shlex.join(again)}` serves the board again")
    except KeyboardInterrupt:
        print("\nboard: stopping the server")
    finally:
        stop(local)
        for s, handler in old_handlers.items():
            signal.signal(s, handler)
    return ok


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _print_urls(local: LocalBoard, records: list[RunRecord], served: dict | None) -> None:
    print(f"board: {local.url}/")
    for record in records:
        print(f"run:   {local.url}/runs/{record.run_id}")
    if served is not None:
        style = "chat-tuned" if served["mode"] == "chat" else "base model, completion style"
        print(f"chat:  {local.url}/chat   (run {served['run_id']}, {style})")
        body = json.dumps({"model": served["model"], "messages": [{"role": "user", "content": "Hi!"}]})
        print(f"API:   curl {local.url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'")
