"""Chat serving latency: time to first token and streamed tokens/s through HTTP vs the raw engine (CPU).

    python -m bench.chat_latency                        # depth 4, random weights, 5 requests of 128 tokens
    python -m bench.chat_latency --repeats 2 --max-tokens 64 --threads 1     # a short version

The model is a depth-4 baseline GPT (model_dim 256, head dim 128, the golden tokenizer's vocab of
4096, sequence_len --seq-len) with random weights. "engine" calls `baseline.engine.Engine.generate` in
this process; "http" starts the leaderboard app under uvicorn in a child process with that model
swapped in (`leaderboard.chat.local_served`) and streams `POST /v1/chat/completions` with httpx.
Time to first token (TTFT) is from sending the request (or calling generate) to the first token
(the first SSE chunk with content); tokens/s is (tokens - 1) / (last token - first token). Both sides
decode the same prompt with the same seed, so they generate the same tokens. Medians over --repeats
(engine and http runs interleaved, so both see the same machine load), after one warm-up each.
Goals (issue 7): HTTP TTFT < 150 ms, HTTP tokens/s >= 90% of the engine's. The client, the server's
event loop and its generation thread all need a core: on a busy 2-core machine the ratio drops.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The history of the city begins with a small settlement on the river, where traders"


def build(seq_len: int, seed: int = 0):
    from baseline.checkpoint import build_model
    from baseline.gpt import GPTConfig
    from baseline.tokenizer import Tokenizer
    from tests.leaderboard_fixtures import GOLDEN_TOKENIZER

    tokenizer = Tokenizer.load(GOLDEN_TOKENIZER)
    config = GPTConfig(
        sequence_len=seq_len, vocab_size=tokenizer.vocab_size, n_layer=4, n_head=2, n_kv_head=2, n_embd=256
    )
    torch.manual_seed(seed)
    model = build_model(config, "cpu")
    with torch.no_grad():  # init zeroes the output projections; random ones make every layer do its work
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval(), tokenizer


def engine_run(engine, prompt: list[int], max_tokens: int, seed: int) -> dict:
    t0 = time.perf_counter()
    stamps = []
    for _ in engine.generate(prompt, 1, max_tokens=max_tokens, temperature=0.8, top_k=50, seed=seed):
        stamps.append(time.perf_counter())
    return {
        "ttft_s": stamps[0] - t0,
        "tokens": len(stamps),
        "tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
    }


def http_run(client, url: str, max_tokens: int, seed: int) -> dict:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "top_k": 50,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    stamps, tokens = [], None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c["delta"].get("content") for c in chunk["choices"]):
                stamps.append(time.perf_counter())
    # a chunk is a token, except where a token ends inside a UTF-8 character (text held for the next)
    tokens = tokens or len(stamps)
    return {"ttft_s": stamps[0] - t0, "tokens": tokens, "tokens_per_s": (tokens - 1) / (stamps[-1] - stamps[0])}


def serve(port: int, seq_len: int, threads: int, stream_interval_s: float) -> None:
    """The child process: the leaderboard app with the random model swapped in."""
    import uvicorn

    from leaderboard.app import create_app
    from leaderboard.chat import ChatService, ChatSettings, local_served
    from tests import leaderboard_fixtures as fixtures

    torch.set_num_threads(threads)
    app = create_app(fixtures.server_settings(Path(tempfile.mkdtemp(prefix="chat-bench-"))))
    app.state.chat = ChatService(
        ChatSettings(stream_interval_s=stream_interval_s), settings=app.state.settings, db=app.state.engine, poll=False
    )
    app.state.chat.swap(local_served(*build(seq_len), name="bench"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the engine and of the server")
    ap.add_argument("--stream-interval-s", type=float, default=0.02, help="the server's ChatSettings.stream_interval_s")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_port:
        serve(args.serve_port, args.seq_len, args.threads, args.stream_interval_s)
        return {}
    import httpx

    from baseline.engine import Engine

    torch.set_num_threads(args.threads)
    model, tokenizer = build(args.seq_len)
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode(PROMPT, prepend=tokenizer.bos_id)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "bench.chat_latency", "--serve-port", str(port), "--seq-len", str(args.seq_len)]
    server = subprocess.Popen(
        [*cmd, "--threads", str(args.threads), "--stream-interval-s", str(args.stream_interval_s)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the chat server did not come up")
                time.sleep(0.2)
            engine_run(engine, prompt, 8, 0)  # warm-up
            http_run(client, url, 8, 0)
            raw, web = [], []
            for seed in range(args.repeats):  # interleaved, so both sides see the same machine load
                raw.append(engine_run(engine, prompt, args.max_tokens, seed))
                web.append(http_run(client, url, args.max_tokens, seed))
    finally:
        server.terminate()
        server.wait(20)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    out = {
        "config": {**vars(args), "json": str(args.json) if args.json else None, "model": model.config.to_dict()},
        "engine": {"ttft_ms": 1000 * med(raw, "ttft_s"), "tokens_per_s": med(raw, "tokens_per_s"), "runs": raw},
        "http": {"ttft_ms": 1000 * med(web, "ttft_s"), "tokens_per_s": med(web, "tokens_per_s"), "runs": web},
    }
    out["http_over_engine_tokens_per_s"] = out["http"]["tokens_per_s"] / out["engine"]["tokens_per_s"]
    print(
        f"depth 4 (d_model 256), prompt {len(prompt)} tokens, {args.max_tokens} new tokens, {args.threads} thread(s), "
        f"stream interval {args.stream_interval_s * 1000:g} ms"
    )
    for side in ("engine", "http"):
        print(f"  {side:6s}  TTFT {out[side]['ttft_ms']:7.1f} ms   {out[side]['tokens_per_s']:7.1f} tokens/s")
    print(f"  http / engine tokens/s: {out['http_over_engine_tokens_per_s']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
