"""Chat serving: the OpenAI-shaped API (TestClient and a real uvicorn server), limits, hot swap, the page.

Runs are verified here by writing their Verification directly (the worker's own checks have their
tests); the served weights are the golden model's, uploaded in real bundles. The openai client test
skips without the `openai` package, the browser test without chromium/chromedriver.
"""

import json
import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi")

from sqlmodel import Session  # noqa: E402

from baseline.checkpoint import load_model, save_checkpoint  # noqa: E402
from baseline.engine import Engine, render_for_reply  # noqa: E402
from leaderboard import crud, ranking  # noqa: E402
from leaderboard.chat import ChatService, ChatSettings, ServedModel  # noqa: E402
from leaderboard.db import get_engine  # noqa: E402
from leaderboard.models import TrackRow  # noqa: E402
from protocol.record import write_record  # noqa: E402
from tests import leaderboard_fixtures as fixtures  # noqa: E402
from tests.conftest import minimal_record  # noqa: E402
from tests.test_leaderboard_api import make_env, upload  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
HELLO = [{"role": "user", "content": "The capital of France is"}]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    if why := fixtures.available():
        pytest.skip(why)
    root, cache = tmp_path_factory.mktemp("chat-bundles"), {}
    out = {
        f"slow{i}": fixtures.make_bundle(root / f"s{i}", run_id=f"slow{i}", seed=i, provenance_cache=cache)
        for i in (0, 1)
    }
    for i in (0, 1):  # a second submission, faster: it takes the record when verified
        out[f"fast{i}"] = fixtures.make_bundle(
            root / f"f{i}", run_id=f"fast{i}", seed=10 + i, submission="fast-sub", dt_s=0.3, provenance_cache=cache
        )
    return out


def mark_verified(env, *run_ids: str) -> None:
    """What the worker writes when every check passes (recomputed = claimed), then the standings."""
    with Session(env.client.app.state.engine) as session:
        for run_id in run_ids:
            run = crud.get_run(session, run_id=run_id)
            v = crud.verification_of(session, run=run)
            v.sqlmodel_update(
                {"status": "verified", "recomputed_val_bpb": run.val_bpb, "recomputed_train_time_s": run.train_time_s}
            )
            session.add(v)
            session.commit()
            ranking.update_standing(session, track=session.get(TrackRow, run.track_id), submission_id=run.submission_id)


def attach(env, **limits) -> ChatService:
    app = env.client.app
    app.state.chat = ChatService(ChatSettings(**limits), settings=env.settings, db=app.state.engine, poll=False)
    return app.state.chat


@pytest.fixture
def served_env(tmp_path, bundles):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")
    for name in ("slow0", "slow1"):
        assert upload(env, bundles[name], env.alice).status_code == 201
    mark_verified(env, "slow0", "slow1")
    return env


def sse_chunks(text: str) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as the string)."""
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def greedy_text(env, messages, max_tokens: int) -> str:
    engine = env.client.app.state.chat.current.engine
    prompt = env.client.app.state.chat.current.prompt_ids(messages)
    return engine.tokenizer.decode(engine.generate_batch(prompt, 1, max_tokens=max_tokens, temperature=0)[0])


class SlowEngine(Engine):
    """The golden engine, sleeping between steps: keeps a generation busy for the limit tests."""

    delay_s = 0.15

    def generate(self, *args, **kwargs):
        for column in super().generate(*args, **kwargs):
            time.sleep(self.delay_s)
            yield column


def wait_until_idle(service: ChatService) -> None:
    """A generation thread lets go of its slot just after its last token reached the client."""
    deadline = time.monotonic() + 10
    while (service.admitted or service.running) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.admitted == 0 and service.running == 0


def slow_copy(served: ServedModel) -> ServedModel:
    return ServedModel(SlowEngine(served.engine.model, served.engine.tokenizer), dict(served.info), served.key)


# ------------------------------------------------------------------ API with TestClient


def test_nothing_verified_means_503_with_a_reason_and_no_models(tmp_path):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")
    service = attach(env)
    assert service.refresh() is False
    r = env.client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    r = env.client.post("/v1/chat/completions", json={"model": "golden", "messages": HELLO})
    assert r.status_code == 503 and "no verified run" in r.json()["detail"]
    assert env.client.get("/v1/models").json() == {"object": "list", "data": []}


def test_the_top_verified_run_is_served_completion_style_and_greedy_equals_the_engine(served_env):
    service = attach(served_env)
    assert service.refresh() is True and service.refresh() is False  # loaded once
    health = served_env.client.get("/health").json()
    assert health["status"] == "ok" and health["mode"] == "completion" and health["run_id"] in ("slow0", "slow1")
    (model,) = served_env.client.get("/v1/models").json()["data"]
    assert model["id"] == "golden" and model["mode"] == "completion" and model["owned_by"] == "alice"
    r = served_env.client.post(
        "/v1/chat/completions", json={"model": "golden", "messages": HELLO, "temperature": 0, "max_tokens": 12}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "golden"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert choice["message"]["content"] == greedy_text(served_env, HELLO, 12)
    prompt = service.current.prompt_ids(HELLO)
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 12, "total_tokens": len(prompt) + 12}


@pytest.mark.parametrize("interval_s", [0.0, 10.0])
def test_streaming_sends_chunks_that_add_up_to_the_reply_and_ends_with_done(served_env, interval_s):
    attach(served_env, stream_interval_s=interval_s).refresh()
    request = {"model": "golden", "messages": HELLO, "temperature": 0, "max_tokens": 12}
    with served_env.client.stream(
        "POST", "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = sse_chunks(r.read().decode())
    assert chunks[-1] == "[DONE]"
    *chunks, usage = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"][0]["delta"].get("content")]
    assert "".join(pieces) == greedy_text(served_env, HELLO, 12)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    # At most a chunk per token (steps that queue up behind a slow reader are merged); with a long
    # interval, the first token goes out at once and the rest with the end.
    assert 1 <= len(pieces) <= (12 if interval_s == 0 else 2)


def test_n_choices_are_decoded_as_one_batch_and_seeded_sampling_repeats(served_env):
    attach(served_env).refresh()
    request = {"model": "golden", "messages": HELLO, "n": 3, "max_tokens": 10, "seed": 5, "temperature": 1.0}
    a = served_env.client.post("/v1/chat/completions", json=request).json()
    b = served_env.client.post("/v1/chat/completions", json=request).json()
    texts = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c["message"]["content"] for c in b["choices"]]


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        ({"model": "gpt-4"}, 404, "not served here"),
        ({"max_tokens": 10_000}, 400, "max_tokens = 10000 is over"),
        ({"n": 9}, 400, "n = 9 is over"),
        ({"stop": ["\n"]}, 400, "stop sequences"),
        ({"messages": [{"role": "user", "content": "word " * 300}]}, 400, "over this server's limit of 200"),
        ({"messages": []}, 422, "at least 1"),
        ({"temperature": 5}, 422, "less than or equal to 2"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
    ],
)
def test_bad_requests_get_4xx_with_a_detail(served_env, change, status, says):
    attach(served_env, max_prompt_tokens=200).refresh()
    r = served_env.client.post("/v1/chat/completions", json={"model": "golden", "messages": HELLO, **change})
    assert r.status_code == status, r.text
    assert says in json.dumps(r.json()["detail"])


def test_a_long_prompt_is_refused_by_its_characters_before_it_is_tokenized(served_env, monkeypatch):
    service = attach(served_env, max_prompt_chars=1000)
    service.refresh()
    tokenized = []
    monkeypatch.setattr(ServedModel, "prompt_ids", lambda self, messages: tokenized.append(1) or [1])
    r = served_env.client.post(
        "/v1/chat/completions", json={"model": "golden", "messages": [{"role": "user", "content": "x" * 5000}]}
    )
    assert r.status_code == 400 and "5,000 characters" in r.json()["detail"] and tokenized == []
    body = {"model": "golden", "messages": [{"role": "user", "content": "x" * 100_000_000}]}
    assert served_env.client.post("/v1/chat/completions", json=body).status_code == 413  # never read


def test_a_full_queue_gets_429_and_the_slot_frees_afterwards(served_env):
    service = attach(served_env, max_concurrent=1, max_queued=0)
    service.refresh()
    service.swap(slow_copy(service.current))
    request = {"model": "golden", "messages": HELLO, "max_tokens": 8}
    first = {}
    t = threading.Thread(target=lambda: first.update(r=served_env.client.post("/v1/chat/completions", json=request)))
    t.start()
    deadline = time.monotonic() + 10
    while service.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    r = served_env.client.post("/v1/chat/completions", json=request)
    assert r.status_code == 429 and "try again" in r.json()["detail"] and r.headers["retry-after"] == "5"
    t.join(20)
    assert first["r"].status_code == 200
    assert served_env.client.post("/v1/chat/completions", json=request).status_code == 200
    wait_until_idle(service)


def test_a_request_over_the_timeout_gets_504_or_an_error_event(served_env):
    service = attach(served_env, timeout_s=0.5)
    service.refresh()
    service.swap(slow_copy(service.current))  # 0.15 s per token: 20 tokens take 3 s
    request = {"model": "golden", "messages": HELLO, "max_tokens": 20}
    r = served_env.client.post("/v1/chat/completions", json=request)
    assert r.status_code == 504 and "limit of 0.5 s" in r.json()["detail"]
    r = served_env.client.post("/v1/chat/completions", json={**request, "stream": True})
    chunks = sse_chunks(r.text)
    assert chunks[-1] == "[DONE]" and chunks[-2]["error"]["type"] == "timeout"
    wait_until_idle(service)  # the generation thread stops by itself


def test_a_new_record_is_swapped_in_while_a_request_finishes_on_the_old_model(served_env, bundles):
    service = attach(served_env)
    service.refresh()
    old = service.current.info["run_id"]
    service.swap(slow_copy(service.current))
    for name in ("fast0", "fast1"):
        assert upload(served_env, bundles[name], served_env.bob).status_code == 201
    mark_verified(served_env, "fast0", "fast1")
    request = {"model": "golden", "messages": HELLO, "max_tokens": 8, "stream": True}
    first = {}
    t = threading.Thread(target=lambda: first.update(r=served_env.client.post("/v1/chat/completions", json=request)))
    t.start()
    while service.running == 0:
        time.sleep(0.01)
    r = served_env.client.post("/api/admin/chat/reload", headers=served_env.auth(served_env.admin))
    assert r.status_code == 200 and r.json()["swapped"] is True, r.json()
    assert r.json()["run_id"] in ("fast0", "fast1")
    t.join(20)
    old_chunks = sse_chunks(first["r"].text)
    assert old_chunks[-1] == "[DONE]" and old_chunks[0]["system_fingerprint"] == f"{old}:completion"
    assert not any("error" in c for c in old_chunks[:-1])
    new = served_env.client.post("/v1/chat/completions", json={**request, "stream": False}).json()
    assert new["system_fingerprint"].startswith("fast")
    (model,) = served_env.client.get("/v1/models").json()["data"]
    assert model["owned_by"] == "bob" and model["submission"] == "fast-sub" and model["rank"] == 1
    assert (
        served_env.client.post("/api/admin/chat/reload", headers=served_env.auth(served_env.alice)).status_code == 403
    )


def write_chat_child(runs_dir, parent: str, settings) -> None:
    """A chat-tuned child run as harness.chat_tune writes it (here: the golden weights, flagged chat-tuned)."""
    with Session(get_engine(settings.database_url)) as session:
        run = crud.get_run(session, run_id=parent)
        bundle_dir = settings.storage_dir / "bundles" / run.bundle_sha256
    model, _, _ = load_model(bundle_dir, tokenizer_dir=fixtures.GOLDEN_TOKENIZER)
    child = runs_dir / f"{parent}-chat"
    save_checkpoint(child / "checkpoints", 3, model, None, {"chat_tuned": True})
    record = minimal_record(
        child.name,
        parent_run_id=parent,
        finished="2026-12-01T00:00:00",
        files={"checkpoint": "checkpoints/step_000003"},
    )
    write_record(child, record)


def test_a_chat_tuned_child_is_served_chat_style_and_turns_are_checked(served_env, tmp_path):
    service = attach(served_env)
    service.refresh()
    write_chat_child(tmp_path / "runs", service.current.info["run_id"], served_env.settings)
    service.chat = ChatSettings(runs_dir=tmp_path / "runs")
    assert service.refresh() is True and service.current.is_chat
    assert served_env.client.get("/v1/models").json()["data"][0]["mode"] == "chat"
    convo = [*HELLO, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    r = served_env.client.post(
        "/v1/chat/completions", json={"model": "golden", "messages": convo, "temperature": 0, "max_tokens": 6}
    )
    assert r.status_code == 200
    tok = service.current.engine.tokenizer
    assert service.current.prompt_ids(convo) == render_for_reply(tok, convo)
    assert r.json()["choices"][0]["message"]["content"] == greedy_text(served_env, convo, 6)
    for bad, says in (
        ([{"role": "assistant", "content": "hi"}], "'user' was expected"),
        ([*HELLO, {"role": "assistant", "content": "x"}], "last message must be the user's"),
        ([*HELLO, {"role": "system", "content": "x"}], "system message may only come first"),
    ):
        r = served_env.client.post("/v1/chat/completions", json={"model": "golden", "messages": bad})
        assert r.status_code == 400 and says in r.json()["detail"], r.text


# ------------------------------------------------------------------ a real server: openai client and browser


@pytest.fixture(scope="module")
def live(tmp_path_factory, bundles):
    pytest.importorskip("uvicorn")
    tmp = tmp_path_factory.mktemp("live")
    env = make_env(tmp, f"sqlite:///{tmp / 'lb.db'}")
    for name in ("slow0", "slow1"):
        assert upload(env, bundles[name], env.alice).status_code == 201
    mark_verified(env, "slow0", "slow1")
    assert attach(env).refresh()
    with fixtures.serve_in_thread(env.client.app) as url:
        yield env, url


def test_the_openai_client_streams_and_completes_against_the_server(live):
    openai = pytest.importorskip("openai")
    env, url = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["golden"]
    full = client.chat.completions.create(model="golden", messages=HELLO, temperature=0, max_tokens=10)
    stream = client.chat.completions.create(model="golden", messages=HELLO, temperature=0, max_tokens=10, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == full.choices[0].message.content == greedy_text(env, HELLO, 10)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="golden", messages=HELLO, max_tokens=100_000)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed: run `bash scripts/ci_services.sh`")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_the_chat_page_streams_tokens_in_as_they_are_generated(live, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env, url = live
    service = env.client.app.state.chat
    plain = service.current
    service.swap(slow_copy(plain))  # 0.15 s a token: the page must show a partial reply before the end
    try:
        browser.get(url + "/chat")
        served = browser.find_element(By.ID, "served")
        assert served.get_attribute("data-mode") == "completion" and "base model" in browser.page_source
        assert browser.find_element(By.ID, "served-run").text in ("slow0", "slow1")
        browser.find_element(By.ID, "temperature").clear()
        browser.find_element(By.ID, "temperature").send_keys("0")
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("16")
        browser.find_element(By.ID, "prompt").send_keys(HELLO[0]["content"])
        browser.find_element(By.ID, "send").click()
        reply = lambda: browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")  # noqa: E731
        seen = []  # the reply's text while it is still streaming
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            el = reply()[-1] if reply() else None
            if el is not None and "streaming" in el.get_attribute("class") and el.text:
                seen.append(el.text)
            if el is not None and "done" in el.get_attribute("class"):
                break
            time.sleep(0.05)
        WebDriverWait(browser, 30).until(lambda b: "done" in reply()[-1].get_attribute("class"))
        final = reply()[-1]
        assert final.get_attribute("data-finish") == "length" and "error" not in final.get_attribute("class")
        assert final.text == greedy_text(env, HELLO, 16).strip() or final.text == greedy_text(env, HELLO, 16)
        assert seen and len(set(seen)) >= 2 and all(final.text.startswith(s) for s in seen)  # grew piece by piece
        assert "pieces in" in browser.find_element(By.ID, "status").text
    finally:
        service.swap(plain)
