"""The bundle members the server reads, as strict schemas, and what each must be for a track.

    events = parse_events(path)                    # protocol.events' typed lines, bounded
    info, samples = parse_telemetry(path)          # the info line and the samples, typed and bounded
    header = read_safetensors_header(path)         # name -> TensorEntry, offsets checked against the file
    check_model_against_track(meta, header, track, division) # vocab, sequence length, every tensor's shape
    weights_sha256(path, header)                   # the tensors' content hash: one model, one run

Everything here runs at upload (leaderboard/uploads.py), before a bundle is stored: a member that does
not fit is a 422 with a one-line reason, so the verifier and the pages never meet a bad type, an unknown
key, a number out of range, or a model the track's data could not have made. The models forbid unknown
keys (the runner writes exactly these), refuse NaN and infinities and bound every number and string.
Errors are ValueErrors naming the member, the line and the field.
"""

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from baseline.config import TrainConfig
from baseline.gpt import GPT, GPTConfig
from protocol.events import EndEvent, Event, parse_event
from protocol.tracks import Track

MAX_STEPS = 10_000_000  # a gpt2 run is ~10k steps: 1000x headroom, and a bound on every step index
MAX_HEADER_BYTES = 100 * 1024**2  # safetensors' own limit on its JSON header
MAX_TENSORS = 10_000
Time = Annotated[float, Field(ge=0, le=1e11)]  # wall: seconds since the epoch (to the year 5138)
Seconds = Annotated[float, Field(ge=0, le=1e7)]
Number = Annotated[float, Field(ge=-1e15, le=1e15)]
Step = Annotated[int, Field(ge=0, le=MAX_STEPS)]
Short = Annotated[str, Field(max_length=500)]
Long = Annotated[str, Field(max_length=10_000)]


class _Strict(BaseModel):
    # strict: "5" is not 5, true is not 1; frozen: parsed lines are read, never edited.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, frozen=True)


# ------------------------------------------------------------------ events.jsonl (protocol/events.py)

MAX_END_KEYS, MAX_END_CHARS = 40, 500  # the end line's summary: TrainResult's fields, short scalars


def _lines(path: Path, name: str) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", errors="strict") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_no_constants)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"{name} line {i} is not JSON ({str(e)[:100]})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{name} line {i} is not a JSON object")
            yield i, row


def _no_constants(token: str):
    raise ValueError(f"{token} is not a number JSON allows")


def _fit(cls, row: dict, name: str, i: int):
    try:
        return cls.model_validate(row)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(map(str, first["loc"])) or "the line"
        raise ValueError(f"{name} line {i} does not fit the {cls.__name__} schema at {at}: {first['msg']}") from None


def _scalar(v) -> bool:
    return v is None or isinstance(v, bool | int | str) or (isinstance(v, float) and math.isfinite(v))


def parse_events(path: Path, name: str = "events.jsonl") -> list[Event]:
    """Every line of an events file as protocol.events' typed event (JSON's NaN refused, the end line's free
    summary held to a few short scalars); ValueError (one line) at the first that does not fit."""
    out = []
    try:
        for i, row in _lines(path, name):
            event = parse_event(row, where=f"{name} line {i}")
            if isinstance(event, EndEvent):
                extra = event.model_extra or {}
                long = [k for k, v in extra.items() if not _scalar(v) or len(str(v)) > MAX_END_CHARS]
                if len(extra) > MAX_END_KEYS or long:
                    raise ValueError(f"{name} line {i} (end) holds more than the trainer's short summary")
            out.append(event)
            if len(out) > 2 * MAX_STEPS:
                raise ValueError(f"{name} has over {2 * MAX_STEPS:,} lines: more than any run writes")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return out


# ------------------------------------------------------------------ telemetry.jsonl (harness/telemetry.py)


class NvmlGpu(_Strict):
    index: Annotated[int, Field(ge=0, le=1024)]
    name: Annotated[str, Field(max_length=200)]
    power_limit_w: Number | None = None
    memory_total_bytes: Annotated[int, Field(ge=0, le=2**50)] | None = None


class NvmlInfo(_Strict):
    driver_version: Annotated[str, Field(max_length=100)]
    count: Annotated[int, Field(ge=0, le=1024)]
    gpus: Annotated[list[NvmlGpu], Field(max_length=1024)]


class InfoLine(_Strict):
    kind: Literal["info"]
    t: Seconds
    wall: Time
    pid: Annotated[int, Field(ge=0, le=2**31)]
    interval_s: Seconds
    backend: Literal["nvml", "cpu"]
    nvml_error: Long | None = None
    rapl_error: Long | None = None
    nvml: NvmlInfo | None = None
    cpu_count: Annotated[int, Field(ge=1, le=100_000)] | None = None


class CpuSample(_Strict):
    cpu_percent: Number | None = None
    process_cpu_percent: Number | None = None
    rss_bytes: Annotated[int, Field(ge=0, le=2**50)] | None = None
    n_processes: Annotated[int, Field(ge=0, le=100_000)] = 0
    rapl_energy_j: Number | None = None


class GpuSample(_Strict):
    index: Annotated[int, Field(ge=0, le=1024)]
    power_w: Number | None = None
    energy_j: Number | None = None
    utilization_pct: Number | None = None
    memory_used_bytes: Annotated[int, Field(ge=0, le=2**50)] | None = None
    temperature_c: Number | None = None
    sm_clock_mhz: Number | None = None
    throttle_reasons: Annotated[int, Field(ge=0, le=2**63)] | None = None
    throttle_names: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=64)] = []


class SampleLine(_Strict):
    kind: Literal["sample"]
    t: Seconds
    wall: Time
    cpu: CpuSample
    gpus: Annotated[list[GpuSample], Field(max_length=1024)] | None = None


class OtherLine(_Strict):
    kind: Literal["mark", "error"]
    t: Seconds
    wall: Time
    name: Short | None = None
    source: Short | None = None
    error: Long | None = None


_TELEMETRY_KINDS = {"info": InfoLine, "sample": SampleLine, "mark": OtherLine, "error": OtherLine}


def parse_telemetry(path: Path, name: str = "telemetry.jsonl") -> tuple[InfoLine | None, list[SampleLine]]:
    """(the first info line, the samples); ValueError (one line) at the first line that does not fit."""
    info, samples = None, []
    try:
        for i, row in _lines(path, name):
            cls = _TELEMETRY_KINDS.get(row.get("kind"))
            if cls is None:
                raise ValueError(f"{name} line {i} has kind {str(row.get('kind'))[:40]!r}: info, sample, mark or error")
            line = _fit(cls, row, name, i)
            if isinstance(line, InfoLine):
                info = info or line
            elif isinstance(line, SampleLine):
                samples.append(line)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return info, samples


# ------------------------------------------------------------------ meta.json and model.safetensors


class ModelConfig(_Strict):
    """baseline.gpt.GPTConfig, bounded before anything is built from it."""

    sequence_len: Annotated[int, Field(ge=1, le=1 << 20)]
    vocab_size: Annotated[int, Field(ge=1, le=1 << 22)]
    n_layer: Annotated[int, Field(ge=1, le=1024)]
    n_head: Annotated[int, Field(ge=1, le=1024)]
    n_kv_head: Annotated[int, Field(ge=1, le=1024)]
    n_embd: Annotated[int, Field(ge=1, le=1 << 16)]
    window_pattern: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[SL]+$")] = "SSSL"


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # step, tokenizer_hash, loop state, ...
    model_config_: ModelConfig = Field(alias="model_config")


DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class TensorEntry(_Strict):
    dtype: Literal[tuple(DTYPE_BYTES)]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=1 << 40)]], Field(max_length=8)]
    data_offsets: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]  # [begin, end)


def read_safetensors_header(path: Path) -> tuple[int, dict[str, TensorEntry]]:
    """(data start, name -> entry) of a safetensors file whose every entry is a tensor that lies, whole and
    without overlap, in the file; ValueError naming what is wrong. (A pickle or a torch.save zip never gets
    here: uploads refuse them unread by their first bytes.)"""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("model.safetensors is too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError("model.safetensors is not safetensors (its header length is impossible)")
        try:
            header = json.loads(f.read(n), parse_constant=_no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError("model.safetensors is not safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError("model.safetensors is not safetensors (its header is not a JSON object)")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("model.safetensors __metadata__ is not an object of strings")
    if len(header) > MAX_TENSORS:
        raise ValueError(f"model.safetensors holds {len(header):,} tensors, over the server's {MAX_TENSORS:,}")
    entries = {}
    for name, raw in header.items():
        try:
            entries[name] = TensorEntry.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            at = ".".join(map(str, first["loc"])) or "the entry"
            raise ValueError(
                f"model.safetensors header entry {name[:100]!r} is not a tensor ({at}: {first['msg']})"
            ) from None
    start, at = 8 + n, 0
    for name, e in sorted(entries.items(), key=lambda kv: kv[1].data_offsets):
        begin, end = e.data_offsets
        if begin != at or end - begin != math.prod(e.shape) * DTYPE_BYTES[e.dtype]:
            raise ValueError(f"model.safetensors tensor {name[:100]!r} does not lie where its header says")
        at = end
    if start + at != size:
        raise ValueError(f"model.safetensors holds {size - start - at:,} bytes its header does not account for")
    return start, entries


def weights_sha256(path: Path, start: int, entries: dict[str, TensorEntry]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes in name order: the same tensors give the same
    hash however the file was written (order, __metadata__, a torch.compile `_orig_mod.` prefix)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for name in sorted(entries, key=lambda k: k.removeprefix("_orig_mod.")):
            e = entries[name]
            h.update(f"{name.removeprefix('_orig_mod.')}|{e.dtype}|{e.shape}\n".encode())
            f.seek(start + e.data_offsets[0])
            left = e.data_offsets[1] - e.data_offsets[0]
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ValueError("model.safetensors ends inside a tensor")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def track_max_seq_len(track: Track) -> int:
    return int(track.recipe.get("max_seq_len", TrainConfig.max_seq_len))


def check_model_against_track(
    meta: dict, entries: dict[str, TensorEntry], track: Track, division: str = "closed"
) -> ModelConfig:
    """The model meta.json describes must be one the track's tokenizer and data could have trained (vocab,
    sequence length), and the header's tensors must be exactly its tensors: checked before anything is built.
    An open model is the submission's own: its tensors are held to its code by name and shape when the
    sandbox loads it (eval/open_scoring.py), here only its meta."""
    try:
        config = CheckpointMeta.model_validate(meta).model_config_
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(map(str, first["loc"]))
        raise ValueError(f"meta.json does not fit the schema at {at}: {first['msg']}") from None
    if config.vocab_size != track.tokenizer.vocab_size:
        raise ValueError(
            f"meta.json says vocab_size {config.vocab_size}, track {track.name}'s tokenizer has "
            f"{track.tokenizer.vocab_size}: the model was not trained with the track's tokenizer"
        )
    if config.sequence_len > track_max_seq_len(track):
        raise ValueError(
            f"meta.json says sequence_len {config.sequence_len}, over track {track.name}'s "
            f"{track_max_seq_len(track)}: train with the track's max_seq_len"
        )
    if division == "open" or meta.get("division") == "open":
        if meta.get("division") != division:
            raise ValueError(
                f"meta.json says division {meta.get('division', 'closed')}, the record {division}: send the "
                "checkpoint the run made"
            )
        return config
    if config.n_layer > len(entries):  # each layer holds tensors: bounds the meta-device build below
        raise ValueError(f"meta.json says {config.n_layer} layers, the weights hold only {len(entries)} tensors")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            model = GPT(GPTConfig(**config.model_dump()))
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ValueError(f"meta.json model_config does not describe a model ({str(e)[:200]})") from None
    got = {k.removeprefix("_orig_mod."): e.shape for k, e in entries.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"the weights do not fit meta.json's model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}"
        )
    return config


# ------------------------------------------------------------------ record.config (baseline.config.TrainConfig)

_CONFIG_TYPES = {
    name: (bool,) if t is bool else (int,) if t is int else (int, float) if t is float else (str,) if t is str else None
    for name, t in TrainConfig.__annotations__.items()
}


def check_train_config(config: dict | None) -> None:
    """record.config holds TrainConfig's fields only, each of its type (a string where a number belongs is
    refused here, not met by the verifier)."""
    for key, value in (config or {}).items():
        if key not in _CONFIG_TYPES:
            raise ValueError(f"record.json config has an unknown field {key[:100]!r}: it holds TrainConfig's fields")
        types = _CONFIG_TYPES[key]
        if value is None or types is None:  # an optional field (compile: bool | None)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"record.json config.{key} is {type(value).__name__}, not a bool or null")
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ValueError(
                f"record.json config.{key} is {type(value).__name__}, TrainConfig's is {types[-1].__name__}"
            )
