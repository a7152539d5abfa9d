"""Inference engine: a KV cache (with the smear state) and batched streaming generation (nanochat engine.py).

    from baseline.engine import Engine
    engine = Engine(model, tokenizer)
    for column in engine.generate(prompt_ids, num_samples=2, max_tokens=64, temperature=0.8, top_k=50):
        ...                                   # column: one new token id per row
    rows = engine.generate_batch(prompt_ids, num_samples=2, max_tokens=64)   # generated ids, no stop token
    ids, mask = render_conversation(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", ...}])
    prompt_ids = render_for_reply(tokenizer, [{"role": "user", "content": "Hi"}])  # ends with <|assistant_start|>

The prompt is prefilled once at batch 1, its cache copied into a cache of `num_samples` rows, and then
one token per row is decoded per step. A row is complete at `<|assistant_end|>` or `<|bos|>`;
generation stops when every row is complete or `max_tokens` were generated. `GPT.generate` is the slow
reference (a full forward per token) and tests check that greedy decoding agrees with it exactly.

nanochat's calculator tool (`<|python_start|>` … `<|python_end|>` evaluated and the result forced in)
is not implemented: no track trains on tool use, and its `eval` + SIGALRM does not belong in a server.
"""

from collections.abc import Iterator

import torch

from baseline.attention import attention_with_cache
from baseline.gpt import GPT

STOP_TOKENS = ("<|assistant_end|>", "<|bos|>")


# ------------------------------------------------------------------ the chat format (nanochat tokenizer.py)


def render_conversation(tokenizer, messages: list[dict], max_tokens: int | None = None) -> tuple[list[int], list[int]]:
    """`<|bos|>` then `<|user_start|>`…`<|user_end|>` / `<|assistant_start|>`…`<|assistant_end|>` turns.

    Returns (ids, mask): mask is 1 on what the model learns to say (assistant content and its
    `<|assistant_end|>`), 0 elsewhere. A leading system message is merged into the first user message,
    as nanochat does. Truncated to `max_tokens` if given.
    """
    messages = list(messages)
    if messages and messages[0]["role"] == "system":
        assert len(messages) > 1 and messages[1]["role"] == "user", "expected a user message after the system one"
        merged = messages[0]["content"] + "\n\n" + messages[1]["content"]
        messages = [{"role": "user", "content": merged}] + messages[2:]
    special = tokenizer.encode_special
    ids, mask = [tokenizer.bos_id], [0]
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        expected = "user" if i % 2 == 0 else "assistant"
        assert role == expected, f"message {i} has role {role!r}; expected {expected!r} (turns alternate from user)"
        body = tokenizer.encode(content)
        if role == "user":
            part = [special("<|user_start|>"), *body, special("<|user_end|>")]
            ids += part
            mask += [0] * len(part)
        else:
            ids += [special("<|assistant_start|>"), *body, special("<|assistant_end|>")]
            mask += [0] + [1] * (len(body) + 1)
    if max_tokens is not None:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return ids, mask


def render_for_reply(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt that asks for the next assistant turn: a conversation ending with a user message,
    followed by `<|assistant_start|>`."""
    assert messages and messages[-1]["role"] in ("user", "system"), "expected the conversation to end with a user turn"
    if messages[-1]["role"] == "system":
        messages = [*messages, {"role": "user", "content": ""}]
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [tokenizer.encode_special("<|assistant_start|>")]


class KVCache:
    """Keys and values of every layer, (n_layer, B, T_max, Hkv, D) in the model's compute dtype.

    The protocol `GPT.forward(idx, kv_cache=...)` relies on: `pos` is the position of the first new
    token (the rotary offset); `prev_embedding` (B, 1, C) is the last token's normed embedding before
    smear (None before the first forward); `attend(layer, q, k, v, window)` stores k, v at
    [pos, pos + T) and attends over [0, pos + T); `advance(T)` runs after the last layer.
    """

    def __init__(self, *, batch_size: int, seq_len: int, n_layer: int, n_kv_head: int, head_dim: int, device, dtype):
        shape = (n_layer, batch_size, seq_len, n_kv_head, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        self.prev_embedding: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model: GPT, batch_size: int, seq_len: int) -> "KVCache":
        c = model.config
        return cls(
            batch_size=batch_size,
            seq_len=seq_len,
            n_layer=c.n_layer,
            n_kv_head=c.n_kv_head,
            head_dim=c.n_embd // c.n_head,
            device=model.cos.device,
            dtype=model.compute_dtype,
        )

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def capacity(self) -> int:
        return self.k.size(2)

    def attend(self, layer: int, q, k, v, window: int) -> torch.Tensor:
        """q (B, T, H, D), k/v (B, T, Hkv, D) -> (B, T, H, D), attending over the cached prefix too."""
        t = q.size(1)
        if self.pos + t > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions is full (at {self.pos}, adding {t})")
        return attention_with_cache(q, k, v, self.k[layer], self.v[layer], self.pos, window)

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    def prefill_from(self, other: "KVCache") -> None:
        """Copy a batch-1 cache into every row of this (larger or equal) cache, smear state included."""
        assert other.batch_size == 1, f"expected a batch-1 cache to copy from, got batch {other.batch_size}"
        assert self.pos == 0, f"expected an empty cache to fill, got one at position {self.pos}"
        assert self.k.shape[0] == other.k.shape[0] and self.k.shape[3:] == other.k.shape[3:], (
            f"cache shapes differ: {tuple(self.k.shape)} vs {tuple(other.k.shape)}"
        )
        assert other.pos <= self.capacity, f"{other.pos} cached positions do not fit into {self.capacity}"
        n = other.pos
        self.k[:, :, :n] = other.k[:, :, :n]  # broadcasts over the batch dimension
        self.v[:, :, :n] = other.v[:, :, :n]
        self.pos = n
        if other.prev_embedding is not None:
            self.prev_embedding = other.prev_embedding.expand(self.batch_size, -1, -1).clone()


def sample_next_token(
    logits: torch.Tensor, rng: torch.Generator | None, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """logits (B, V) -> token ids (B, 1). T=0: argmax; else softmax over the top-k (or all) logits / T."""
    assert temperature >= 0.0, f"expected temperature >= 0, got {temperature}"
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    if top_k is not None and top_k > 0:
        vals, idx = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1)  # (B, k)
        probs = torch.softmax(vals / temperature, dim=-1)
        choice = torch.multinomial(probs, num_samples=1, generator=rng)  # (B, 1)
        return idx.gather(1, choice)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=rng)


class Engine:
    """Streaming batched generation with a KV cache for a `GPT` and its tokenizer."""

    def __init__(self, model: GPT, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(tokenizer.encode_special(name) for name in STOP_TOKENS)

    @torch.inference_mode()
    def generate(
        self,
        tokens: list[int],
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 42,
    ) -> Iterator[list[int]]:
        """Yield, per decode step, one new token id per row (rows that already stopped keep going).

        `max_tokens=None` generates up to the model's sequence_len in total (at least one token).
        """
        assert isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens), (
            "expected a non-empty list of token ids"
        )
        assert num_samples >= 1, f"expected num_samples >= 1, got {num_samples}"
        model = self.model
        if max_tokens is None:
            max_tokens = max(1, model.config.sequence_len - len(tokens))
        if max_tokens <= 0:
            return
        device = model.cos.device
        rng = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None

        # Prefill the prompt once at batch 1, then copy its cache into every row of the decode cache.
        prefill = KVCache.for_model(model, 1, len(tokens))
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        logits = model(ids, kv_cache=prefill)[:, -1, :].expand(num_samples, -1)  # (B, V)
        cache = KVCache.for_model(model, num_samples, len(tokens) + max_tokens)
        cache.prefill_from(prefill)
        del prefill

        completed = [False] * num_samples
        for step in range(max_tokens):
            column = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()
            completed = [done or tok in self.stop_ids for done, tok in zip(completed, column, strict=True)]
            yield column
            if all(completed) or step == max_tokens - 1:
                return  # no forward for logits nobody will read
            ids = torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1)  # (B, 1)
            logits = model(ids, kv_cache=cache)[:, -1, :]

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs) -> list[list[int]]:
        """The generated ids of each row, without the prompt and without the stop token."""
        rows: list[list[int]] = [[] for _ in range(num_samples)]
        completed = [False] * num_samples
        for column in self.generate(tokens, num_samples, **kwargs):
            for i, tok in enumerate(column):
                if completed[i]:
                    continue
                if tok in self.stop_ids:
                    completed[i] = True
                else:
                    rows[i].append(tok)
            if all(completed):
                break
        return rows
