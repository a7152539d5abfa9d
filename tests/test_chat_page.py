"""The chat page for a newcomer: it names and links the served run, says the exact command that gets a model
when there is none, offers example prompts and shows the same model over the OpenAI API."""

import html

import pytest

pytest.importorskip("fastapi")

from leaderboard.chat import local_served  # noqa: E402
from tests.test_chat_api import attach, bundles, served_env  # noqa: E402, F401 -- fixtures
from tests.test_leaderboard_api import make_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run faster on one thread


def page(env) -> str:
    response = env.client.get("/chat")
    assert response.status_code == 200, response.text
    return html.unescape(response.text)


def test_with_no_model_the_page_gives_the_commands_that_get_one(tmp_path):
    env = make_env(tmp_path, f"sqlite:///{tmp_path / 'lb.db'}")
    service = attach(env, track="cpu-books")
    assert not service.refresh() and service.current is None
    text = page(env)
    assert "No model is served yet" in text and "no verified run on cpu-books" in text
    assert "bash scripts/cpu_speedrun.sh ../shared/data/pretrain" in text
    assert "speedrun submit runs/RUN_ID --server http://testserver --token YOUR_TOKEN\nspeedrun verify" in text
    assert 'class="example"' not in text  # nothing to try yet


def test_a_served_base_model_is_named_linked_and_offers_prompts_to_continue(served_env):  # noqa: F811
    assert attach(served_env).refresh()
    run_id = served_env.client.app.state.chat.current.info["run_id"]
    text = page(served_env)
    assert f'<h1>Chat with run <a href="/runs/{run_id}">{run_id}</a></h1>' in text
    assert f"speedrun chat-tune {run_id}" in text  # how to get the chat style, for this run exactly
    assert ">Once upon a time, in a small village,</button>" in text
    assert "curl http://testserver/v1/chat/completions" in text and '"model": "golden"' in text
    assert 'OpenAI(base_url="http://testserver/v1", api_key="unused")' in text


def test_a_chat_tuned_model_offers_questions(served_env):  # noqa: F811
    service = attach(served_env)
    assert service.refresh()
    base = service.current
    service.swap(local_served(base.engine.model, base.engine.tokenizer, name="tuned", mode="chat"))
    text = page(served_env)
    assert 'data-mode="chat"' in text and 'id="mode-banner"' not in text
    assert ">What is the capital of France?</button>" in text and "Once upon a time" not in text
