"""Tracks as data: one small TOML file each, shipped in `protocol/tracks/` or written by a user.

    from protocol.tracks import load_track
    track = load_track("cpu-books")            # or the path of a .toml file
    track.target.met(2.41), track.hardware.describe(), track.recipe["depth"]

A track pins everything a result is judged by: the hardware, the dataset's identity (content hash),
the tokenizer, the target (metric, threshold, direction), the price of an hour of hardware, and the
recipe: the reference training config every submission starts from. The timing rule is the same for
every track (protocol/timing.py). `speedrun tracks` lists them; `speedrun track calibrate` writes a
measured target back into the file.
"""

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomli_w

BUILTIN_DIR = Path(__file__).parent / "tracks"


@dataclass(frozen=True)
class Hardware:
    kind: str  # "cpu" or "cuda"
    gpu_count: int = 0
    gpu_model: str | None = None  # substring of the device name, e.g. "H100"
    cpu_threads: int | None = None

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"{self.gpu_count}x{self.gpu_model or 'GPU'}"
        return f"CPU, {self.cpu_threads} threads"


@dataclass(frozen=True)
class Dataset:
    source: str  # "local" (a directory the user passes) or "climbmix" (downloadable)
    description: str = ""
    shards: tuple[str, ...] = ()  # exact file names, when pinned
    num_train_shards: int | None = None  # ClimbMix shards 0..n-1 (+ the val shard), when not listed
    content_hash: str = ""  # protocol.hashing.data_fingerprint of the shards; "" = not pinned yet
    default_dir: str | None = None  # relative to the repository
    heldout_shards: tuple[str, ...] = ()  # shards of the same source only the server holds (it scores on them too)
    heldout_hash: str = ""  # protocol.hashing.data_fingerprint of the held-out shards


@dataclass(frozen=True)
class TokenizerSpec:
    vocab_size: int
    max_chars: int
    doc_cap: int = 10_000


def beats(value: float | None, threshold: float, higher_is_better: bool) -> bool | None:
    """Whether `value` beats the threshold in the metric's direction (None when there is no value to judge)."""
    if value is None:
        return None
    return value > threshold if higher_is_better else value < threshold


@dataclass(frozen=True)
class Target:
    metric: str  # "val_bpb" or "core"
    higher_is_better: bool
    threshold: float
    eval_tokens: int = 41_943_040  # val bpb budget (tokens)
    core_max_per_task: int = -1  # -1 = every example (an official CORE)

    def met(self, value: float | None) -> bool | None:
        return beats(value, self.threshold, self.higher_is_better)

    def describe(self) -> str:
        if not self.threshold:
            return f"{self.metric}: target not set"
        return f"{self.metric} {'>' if self.higher_is_better else '<'} {self.threshold:g}"


@dataclass(frozen=True)
class Track:
    name: str
    version: int
    description: str
    provisional: bool
    price_per_hour: float  # USD per GPU-hour (cuda) or per machine-hour (cpu)
    hardware: Hardware
    dataset: Dataset
    tokenizer: TokenizerSpec
    target: Target
    recipe: dict  # TrainConfig fields of the reference run
    calibration: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # where it was read from (never serialized)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def track_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        return path
    builtin = BUILTIN_DIR / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    known = ", ".join(t.stem for t in sorted(BUILTIN_DIR.glob("*.toml")))
    raise ValueError(f"unknown track {name_or_path!r}: use one of {known}, or the path of a track .toml file")


def track_from_dict(raw: dict, path: Path | None = None) -> Track:
    """A Track from the TOML's tables (or Track.to_dict()'s output)."""
    return Track(
        name=raw["name"],
        version=raw["version"],
        description=raw.get("description", ""),
        provisional=raw.get("provisional", True),
        price_per_hour=float(raw["price_per_hour"]),
        hardware=Hardware(**raw["hardware"]),
        dataset=Dataset(
            **{
                **raw["dataset"],
                "shards": tuple(raw["dataset"].get("shards", ())),
                "heldout_shards": tuple(raw["dataset"].get("heldout_shards", ())),
            }
        ),
        tokenizer=TokenizerSpec(**raw["tokenizer"]),
        target=Target(**raw["target"]),
        recipe=dict(raw["recipe"]),
        calibration=dict(raw.get("calibration", {})),
        path=path,
    )


def load_track(name_or_path: str | Path) -> Track:
    path = track_path(name_or_path)
    try:
        return track_from_dict(tomllib.loads(path.read_text()), path)
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
        raise ValueError(f"track file {path.name} is malformed ({problem}); compare with cpu-books.toml") from e


def list_tracks() -> list[Track]:
    return [load_track(p) for p in sorted(BUILTIN_DIR.glob("*.toml"))]


def save_calibration(track: Track, threshold: float, calibration: dict) -> Path:
    """Write the calibrated target into the track file and mark the track no longer provisional."""
    raw = tomllib.loads(track.path.read_text())
    raw["target"]["threshold"] = threshold
    raw["provisional"] = False
    raw["calibration"] = calibration
    track.path.write_text(tomli_w.dumps(raw))
    return track.path


def format_tracks(tracks: list[Track]) -> str:
    rows = [("track", "hardware", "target", "status", "description")]
    for t in tracks:
        status = "provisional" if t.provisional else "calibrated"
        rows.append((f"{t.name} v{t.version}", t.hardware.describe(), t.target.describe(), status, t.description[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4] for r in rows)
