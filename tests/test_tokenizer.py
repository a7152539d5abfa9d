"""The tokenizer reproduces nanochat's: golden encodings, trained ranks and token bytes, file format."""

import json

import pytest
import torch
from safetensors.torch import load_file

from baseline.tokenizer import SPECIAL_TOKENS, Tokenizer, train_from_shards, training_texts
from tests.conftest import load_json


@pytest.fixture(scope="module")
def golden_tok(golden):
    return Tokenizer.load(golden / "tokenizer")


@pytest.fixture(scope="module")
def encode_tests(golden):
    return [json.loads(line) for line in (golden / "tokenizer" / "encode_tests.jsonl").read_text().splitlines()]


def test_golden_tokenizer_loads_with_nanochat_special_token_ids(golden_tok, golden):
    config = load_json(golden / "tokenizer" / "tokenizer.json")
    assert golden_tok.vocab_size == 4096 and golden_tok.n_mergeable == 4087
    assert golden_tok.bos_id == config["bos_id"] == 4087
    assert golden_tok.special_tokens == config["special_tokens"]
    assert [golden_tok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(4087, 4096))


def test_golden_tokenizer_encodes_all_encode_tests_exactly(golden_tok, encode_tests):
    assert len(encode_tests) == 50
    for case in encode_tests:
        assert golden_tok.encode(case["text"]) == case["ids"], case["i"]
        assert golden_tok.encode(case["text"], prepend="<|bos|>") == case["ids_bos"], case["i"]
        assert golden_tok.encode(case["text"], prepend=golden_tok.bos_id) == case["ids_bos"], case["i"]
        assert golden_tok.decode(case["ids"]) == case["text"], case["i"]


def test_batch_encode_equals_single_encode(golden_tok, encode_tests):
    texts = [case["text"] for case in encode_tests]
    assert golden_tok.encode(texts, num_threads=2) == [case["ids"] for case in encode_tests]
    assert golden_tok.encode(texts, prepend="<|bos|>") == [case["ids_bos"] for case in encode_tests]


def test_special_token_text_is_encoded_as_plain_text(golden_tok):
    assert golden_tok.bos_id not in golden_tok.encode("<|bos|>")
    with pytest.raises(ValueError, match="unknown special token"):
        golden_tok.encode_special("<|eos|>")


def test_token_bytes_match_golden(golden_tok, golden):
    expected = load_file(golden / "tokenizer" / "token_bytes.safetensors")["token_bytes"]
    assert golden_tok.token_bytes().dtype == torch.int32
    assert torch.equal(golden_tok.token_bytes(), expected)


def test_training_text_stream_matches_tok_train(pretrain_dir):
    stats = {}
    n_docs = sum(1 for _ in training_texts(pretrain_dir, max_chars=20_000_000, doc_cap=10_000, stats=stats))
    assert n_docs == 2449
    assert stats == {
        "docs_seen": 2449,
        "chars_seen": 20_000_085,
        "docs_cropped": 1444,
        "all_train_docs_used": False,
    }


def test_training_reproduces_golden_tokenizer(pretrain_dir, golden, tmp_path):
    # ~1 s of rustbpe training on 20M characters.
    tok = train_from_shards(pretrain_dir, tmp_path / "tok", vocab_size=4096, max_chars=20_000_000, doc_cap=10_000)
    gold = golden / "tokenizer"
    assert (tmp_path / "tok" / "tokenizer.tiktoken").read_bytes() == (gold / "tokenizer.tiktoken").read_bytes()
    assert load_json(tmp_path / "tok" / "tokenizer.json") == load_json(gold / "tokenizer.json")
    tb = load_file(tmp_path / "tok" / "token_bytes.safetensors")["token_bytes"]
    assert torch.equal(tb, load_file(gold / "token_bytes.safetensors")["token_bytes"])
    assert tok.vocab_size == 4096


def test_save_load_round_trip_and_overwrite(golden_tok, encode_tests, golden, tmp_path):
    out = tmp_path / "tok"
    golden_tok.save(out)
    golden_tok.save(out)  # saving over an existing tokenizer replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp dirs left behind
    assert (out / "tokenizer.tiktoken").read_bytes() == (golden / "tokenizer" / "tokenizer.tiktoken").read_bytes()
    again = Tokenizer.load(out)
    assert again.config() == golden_tok.config()
    assert [again.encode(c["text"]) for c in encode_tests] == [c["ids"] for c in encode_tests]


def test_load_rejects_missing_and_damaged_files(golden_tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a tokenizer directory") as e:
        Tokenizer.load(tmp_path / "nope")
    assert "\n" not in str(e.value)
    golden_tok.save(tmp_path / "tok")
    ranks = tmp_path / "tok" / "tokenizer.tiktoken"
    ranks.write_bytes(ranks.read_bytes() + b"not-base64!\n")
    with pytest.raises(ValueError, match="rank file is damaged"):
        Tokenizer.load(tmp_path / "tok")


def test_vocab_size_too_small_is_refused(pretrain_dir, tmp_path):
    with pytest.raises(ValueError, match="too small"):
        train_from_shards(pretrain_dir, tmp_path / "tok", vocab_size=100, max_chars=1000, doc_cap=100)
