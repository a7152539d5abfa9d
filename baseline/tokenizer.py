"""The BPE tokenizer: nanochat's GPT-4-style byte-level BPE, trained with rustbpe, run with tiktoken.

A tokenizer is a directory of three plain files (no pickle):
  tokenizer.tiktoken       mergeable ranks, tiktoken's text format: `base64(bytes) rank` per line
  tokenizer.json           vocab size, split pattern, special tokens, BOS id, training settings
  token_bytes.safetensors  `token_bytes`, int32 [vocab]: raw bytes per token, 0 for specials (bpb)

Train one on the train split of a data dir (nanochat scripts/tok_train.py):

    speedrun tokenizer train --data-dir D --out DIR --vocab-size 32768 --max-chars 2000000000 --doc-cap 10000
"""

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import tiktoken
import torch
from safetensors.torch import load_file, save_file

from baseline.dataset import Shard, split_files

# GPT-4's split pattern with numbers grouped by up to 2 digits instead of 3 (nanochat tokenizer.py).
PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s+"""
)
# Appended after the mergeable ranks in this order; only BOS is used in pretraining.
SPECIAL_TOKENS = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)
BOS = "<|bos|>"
RANKS_FILE, CONFIG_FILE, TOKEN_BYTES_FILE = "tokenizer.tiktoken", "tokenizer.json", "token_bytes.safetensors"


class Tokenizer:
    """tiktoken encoder over nanochat's mergeable ranks, with the 9 special tokens after them."""

    def __init__(
        self, mergeable_ranks: dict[bytes, int], *, pattern: str = PATTERN, training: dict | None = None
    ):
        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable ranks must be exactly 0..n-1: the rank file is damaged")
        self.special_tokens = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.pattern = pattern
        self.training = training or {}
        self._ranks = mergeable_ranks
        self._enc = tiktoken.Encoding(
            name="rustbpe",
            pat_str=pattern,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def n_mergeable(self) -> int:
        return self.vocab_size - len(self.special_tokens)

    @property
    def bos_id(self) -> int:
        return self.special_tokens[BOS]

    def encode_special(self, name: str) -> int:
        if name not in self.special_tokens:
            raise ValueError(f"unknown special token {name!r}: use one of {SPECIAL_TOKENS}")
        return self.special_tokens[name]

    def encode(
        self, text: str | list[str], prepend: int | str | None = None, num_threads: int = 8
    ) -> list[int] | list[list[int]]:
        """Token ids of a text, or of each text of a list. Special-token text is encoded as plain text.

        `prepend` (an id or a special token name, usually BOS) is put in front of every sequence.
        """
        if isinstance(prepend, str):
            prepend = self.encode_special(prepend)
        head = [] if prepend is None else [prepend]
        if isinstance(text, str):
            return head + self._enc.encode_ordinary(text)
        ids = self._enc.encode_ordinary_batch(text, num_threads=num_threads)
        return [head + row for row in ids] if head else ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    def token_bytes(self) -> torch.Tensor:
        """int32 [vocab]: number of raw bytes of each token, 0 for special tokens (used by bpb)."""
        counts = [len(self._enc.decode_single_token_bytes(i)) for i in range(self.n_mergeable)]
        return torch.tensor(counts + [0] * len(self.special_tokens), dtype=torch.int32)

    def config(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "n_mergeable": self.n_mergeable,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "special_tokens_order": list(SPECIAL_TOKENS),
            "bos_token": BOS,
            "bos_id": self.bos_id,
            "tiktoken_name": "rustbpe",
            "training": self.training,
        }

    def save(self, directory: str | os.PathLike) -> None:
        """Write the three files to a temporary sibling directory, then rename it into place."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a tokenizer is meant to be shared
            ranks = sorted(self._ranks.items(), key=lambda kv: kv[1])
            (tmp / RANKS_FILE).write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks))
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=1) + "\n")
            save_file({"token_bytes": self.token_bytes()}, tmp / TOKEN_BYTES_FILE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # A directory cannot be renamed over a non-empty one: move the old one aside first.
        old = directory.with_name(tmp.name + ".old")
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        directory = Path(directory)
        missing = [f for f in (RANKS_FILE, CONFIG_FILE, TOKEN_BYTES_FILE) if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not a tokenizer directory (missing {', '.join(missing)}): "
                "train one with `speedrun tokenizer train`"
            )
        config = json.loads((directory / CONFIG_FILE).read_text())
        tok = cls(
            _read_ranks(directory / RANKS_FILE), pattern=config["pattern"], training=config.get("training")
        )
        if (
            tok.config()["special_tokens"] != config["special_tokens"]
            or tok.vocab_size != config["vocab_size"]
        ):
            raise ValueError(f"{directory / CONFIG_FILE} does not match {RANKS_FILE}: retrain or re-save it")
        if not torch.equal(load_file(directory / TOKEN_BYTES_FILE)["token_bytes"], tok.token_bytes()):
            raise ValueError(
                f"{directory / TOKEN_BYTES_FILE} does not match {RANKS_FILE}: re-save the tokenizer"
            )
        return tok


def _read_ranks(path: Path) -> dict[bytes, int]:
    # Parsed here rather than with tiktoken.load.load_tiktoken_bpe, which caches files by path
    # in the temp dir and would return stale ranks for a tokenizer re-saved at the same path.
    ranks = {}
    for line_no, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path} line {line_no} is not `base64 rank`: the rank file is damaged") from e
    return ranks


def training_texts(
    data_dir: str | os.PathLike, max_chars: int, doc_cap: int, stats: dict | None = None
) -> Iterator[str]:
    """tok_train's text stream: train-split documents in order, each cut to `doc_cap` characters,
    ending right after the document that takes the running character count above `max_chars`.

    If given, `stats` is updated with docs_seen, chars_seen, docs_cropped, all_train_docs_used.
    """
    stats = {} if stats is None else stats
    stats.update(docs_seen=0, chars_seen=0, docs_cropped=0, all_train_docs_used=False)
    for path in split_files(data_dir, "train"):
        shard = Shard(path)
        for rg_idx in range(shard.num_row_groups):
            for text in shard.texts(rg_idx):
                if len(text) > doc_cap:
                    text = text[:doc_cap]
                    stats["docs_cropped"] += 1
                stats["docs_seen"] += 1
                stats["chars_seen"] += len(text)
                yield text
                if stats["chars_seen"] > max_chars:
                    return
    stats["all_train_docs_used"] = True


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with `vocab_size` tokens in total: 256 bytes + merges + the 9 special tokens."""
    import rustbpe  # only training needs it; machines that just encode (GPU boxes, servers) may lack it

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} too small: need at least {256 + len(SPECIAL_TOKENS)}")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts, vocab_size - len(SPECIAL_TOKENS), pattern=PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    return Tokenizer(ranks)


def train_from_shards(
    data_dir: str | os.PathLike, out_dir: str | os.PathLike, vocab_size: int, max_chars: int, doc_cap: int
) -> Tokenizer:
    """Train on the train split of `data_dir` as nanochat's tok_train does, save to `out_dir`."""
    stats: dict = {}
    tok = train_tokenizer(training_texts(data_dir, max_chars, doc_cap, stats), vocab_size)
    tok.training = {
        "vocab_size_arg": vocab_size,
        "doc_cap": doc_cap,
        "max_chars": max_chars,
        "rustbpe_vocab_size": vocab_size - len(SPECIAL_TOKENS),
        "train_files": [p.name for p in split_files(data_dir, "train")],
        **stats,
    }
    tok.save(out_dir)
    return tok
