"""CORE examples, from task file to token rows and scored spans, exactly as nanochat builds them.

nanochat core_eval.py / base_eval.py (fact sheet §7.2), step by step:
1. read the jsonl, shuffle it with `random.Random(1337)`, keep the first `max_per_task` (all if None);
2. example `idx` takes `k` few-shot examples `Random(1234 + idx).sample(others, k)` from that list;
3. one prompt per option from three templates (d = continuation delimiter, few-shot blocks end "\\n\\n"):
   multiple_choice  "{query}{d}{choice}"            few-shot "{query}{d}{choices[gold]}"
   schema           "{context_option}{d}{cont}"     few-shot "{context_options[gold]}{d}{cont}"
   language_model.  without = "{context.strip()}{d}".strip(), with = "{context.strip()}{d}{cont}"
   (nanochat renders Jinja templates; these f-strings give the same strings, checked against the
   golden prompts in tests/test_eval_core.py);
4. every prompt tokenised with BOS prepended; the scored span [start, end) of each row is: MC, from
   the common token prefix of the options to the end; schema, the common token suffix; LM, the
   tokens of "with" beyond "without" (which must be a token prefix of it). Only "with" is forwarded.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from eval.bundle import TaskSpec, read_jsonl

SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234  # example idx uses Random(FEWSHOT_SEED + idx)
# Fields each task type reads, and which of them must be lists of options.
REQUIRED_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
OPTION_FIELD = {"multiple_choice": "choices", "schema": "context_options"}


@dataclass
class Example:
    """One evaluated item: the rows to forward (BOS first) and the span of each row that is scored."""

    idx: int  # position in the shuffled, truncated task list
    source_line: int  # 0-based line in the task file
    task_type: str
    fewshot: list[int]
    prompts: list[str]  # LM: [without, with]
    rows: list[list[int]]  # LM: just "with"
    starts: list[int]
    ends: list[int]
    gold: int | None  # the correct option (None for language modeling)


def read_task(bundle_dir: str | Path, spec: TaskSpec) -> list[dict]:
    """All rows of the task file, each checked for the fields its task type reads."""
    path = spec.path(Path(bundle_dir))
    rows = read_jsonl(path)
    for line_no, row in enumerate(rows, 1):
        _check_row(row, spec.task_type, f"{path}:{line_no}")
    return rows


def evaluation_order(rows: list[dict], max_per_task: int | None = None) -> list[tuple[int, dict]]:
    """(source line, row) pairs: shuffled with Random(1337), then the first max_per_task (all if None or <= 0)."""
    order = list(range(len(rows)))
    random.Random(SHUFFLE_SEED).shuffle(order)  # the permutation depends only on the length
    if max_per_task is not None and max_per_task > 0:
        order = order[:max_per_task]
    return [(i, rows[i]) for i in order]


def load_task(bundle_dir: str | Path, spec: TaskSpec, max_per_task: int | None = None) -> list[tuple[int, dict]]:
    return evaluation_order(read_task(bundle_dir, spec), max_per_task)


def _check_row(row: dict, task_type: str, where: str) -> None:
    missing = [k for k in REQUIRED_FIELDS[task_type] if k not in row]
    if missing:
        raise ValueError(f"{where}: a {task_type} row needs {', '.join(missing)}: fix the line or re-download")
    options = row.get(OPTION_FIELD.get(task_type, ""), None)
    if task_type in OPTION_FIELD and (not isinstance(options, list) or not options):
        raise ValueError(f"{where}: {OPTION_FIELD[task_type]} must be a non-empty list: fix the line")
    if "gold" in REQUIRED_FIELDS[task_type]:
        gold = row["gold"]
        if not isinstance(gold, int) or not 0 <= gold < len(options):
            raise ValueError(f"{where}: gold {gold!r} is not an index into the {len(options)} options")


def fewshot_indices(idx: int, n: int, k: int, label: str = "") -> list[int]:
    """nanochat's few-shot draw for example idx among the n kept examples."""
    if k == 0:
        return []
    if k > n - 1:
        raise ValueError(
            f"task {label} needs {k} few-shot examples but only {n - 1} others are kept: raise --max-per-task"
        )
    return random.Random(FEWSHOT_SEED + idx).sample([i for i in range(n) if i != idx], k)


def render_prompts(task_type: str, item: dict, delimiter: str, shots: list[dict]) -> list[str]:
    """The prompt strings of one example (Jinja's `{{ v }}` is str(v), `| trim` is str.strip())."""
    d = delimiter
    if task_type == "multiple_choice":
        context = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{context}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task_type == "schema":
        context = "".join(f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots)
        return [f"{context}{option}{d}{item['continuation']}" for option in item["context_options"]]
    if task_type == "language_modeling":
        context = "".join(f"{str(s['context']).strip()}{d}{s['continuation']}\n\n" for s in shots)
        stem = f"{context}{str(item['context']).strip()}{d}"
        return [stem.strip(), f"{stem}{item['continuation']}"]
    raise ValueError(f"unknown task type {task_type!r}: expected multiple_choice, schema or language_modeling")


def common_length(rows: list[list[int]], from_end: bool = False) -> int:
    """Length of the token prefix (or suffix) shared by all rows."""
    n = min(len(r) for r in rows)
    for i in range(n):
        j = -1 - i if from_end else i
        if any(r[j] != rows[0][j] for r in rows):
            return i
    return n


def spans(task_type: str, tokens: list[list[int]], where: str = "") -> tuple[list[list[int]], list[int], list[int]]:
    """(rows to forward, starts, ends) from the tokenised prompts of one example."""
    if task_type == "multiple_choice":
        start = common_length(tokens)
        return tokens, [start] * len(tokens), [len(t) for t in tokens]
    if task_type == "schema":
        suffix = common_length(tokens, from_end=True)
        return tokens, [len(t) - suffix for t in tokens], [len(t) for t in tokens]
    without, with_ = tokens
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise ValueError(
            f"{where}: the prompt without the continuation does not tokenise as a prefix of the one with it"
        )
    return [with_], [len(without)], [len(with_)]


def build_examples(spec: TaskSpec, data: list[tuple[int, dict]], tokenizer, indices=None) -> list[Example]:
    """Examples `indices` (default all) of a loaded task, tokenised in one batch call."""
    indices = range(len(data)) if indices is None else indices
    prompts, shots = [], []
    for idx in indices:
        fs = fewshot_indices(idx, len(data), spec.num_fewshot, spec.label)
        shots.append(fs)
        item = data[idx][1]
        prompts.append(render_prompts(spec.task_type, item, spec.continuation_delimiter, [data[j][1] for j in fs]))
    flat = tokenizer.encode([p for ps in prompts for p in ps], prepend=tokenizer.bos_id)
    examples, pos = [], 0
    for idx, fs, ps in zip(indices, shots, prompts, strict=True):
        tokens, pos = flat[pos : pos + len(ps)], pos + len(ps)
        line, item = data[idx]
        rows, starts, ends = spans(spec.task_type, tokens, f"{spec.label} line {line + 1}")
        gold = item.get("gold") if spec.task_type != "language_modeling" else None
        examples.append(Example(idx, line, spec.task_type, fs, ps, rows, starts, ends, gold))
    return examples
