"""Tracks as data: one small TOML file each, shipped in `protocol/tracks/` or written by a user.

    from protocol.tracks import load_track
    track = load_track("cpu-books")            # or the path of a .toml file
    track.target.met(2.41), track.hardware.describe(), track.recipe["depth"]

A track pins everything a result is judged by: the hardware, the dataset's identity (content hash),
the tokenizer, the target (metric, threshold, direction), the price of an hour of hardware, the
recipe: the reference training config every submission starts from, and the divisions it ranks
(`divisions = ["closed", "open"]`; closed alone when absent; submissions/contract.py says what each
may change). The timing rule is the same for
every track (protocol/timing.py). `speedrun tracks` lists them; `speedrun track calibrate` writes a
measured target back into the file.
"""

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomlkit

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
    shards: tuple[str, ...] = ()  # the public shards (train and val), exact file names, when pinned
    val_shards: tuple[str, ...] = ()  # which of them are the val split; () = the last one (nanochat's rule)
    num_train_shards: int | None = None  # ClimbMix shards 0..n-1 (+ the val shard), when not listed
    content_hash: str = ""  # protocol.hashing.data_fingerprint of the public shards; "" = not pinned yet
    default_dir: str | None = None  # relative to the repository
    # The held-out split: shards of the same source that only the leaderboard holds (a submitter never
    # has them), pinned by fingerprint; the server scores uploaded weights on them next to val bpb.
    heldout_shards: tuple[str, ...] = ()
    heldout_hash: str = ""

    def splits(self, files: list[Path]) -> dict[str, list[Path]]:
        """{"train": [...], "val": [...]} of the track's public files (in name order)."""
        val_names = set(self.val_shards) or {files[-1].name}
        return {
            "train": [f for f in files if f.name not in val_names],
            "val": [f for f in files if f.name in val_names],
        }


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


KINDS = ("time_to_target", "budget")
DIVISIONS = ("closed", "open")  # submissions/contract.py: the baseline's model, or the submission's own
REPRODUCERS = ("server", "runners")


@dataclass(frozen=True)
class Reproduce:
    """`[reproduce]`: the leaderboard re-runs some verified runs of each submission in a sandbox and compares.

    by "server": the leaderboard's own verify workers re-run them (CPU tracks; a record there needs its runs
    reproduced); "runners": registered runner machines with the track's hardware do (`speedrun runner`).
    The tolerances are the track's: what the same seed, versions and threads reproduce on its hardware."""

    by: str
    runs_per_submission: int = 1  # re-run this many of a submission's verified runs, chosen at random
    loss_abs_tolerance: float = 1e-4  # max |claimed - reproduced| of any step's training loss
    metric_abs_tolerance: float = 1e-4  # |claimed - reproduced| of the final metric
    # reproduced timed seconds / claimed: over this on the run's own hardware (same CPU model or GPUs) disputes
    # the claimed time; faster than claimed is never held against a run
    time_ratio_max: float = 1.5
    wall_s: float = 3600.0  # the sandbox's wall-time limit for one re-run (warm-up, training and eval)

    def problems(self, track: "Track") -> list[str]:
        found = []
        if self.by not in REPRODUCERS:
            found.append(f"[reproduce] by = {self.by!r}: use one of {', '.join(REPRODUCERS)}")
        if self.by == "server" and track.hardware.kind != "cpu":
            found.append('[reproduce] by = "server" needs a CPU track: the server re-runs on its CPUs only')
        if not track.dataset.content_hash:
            found.append("[reproduce] needs the dataset's content_hash pinned: a re-run must read the same data")
        if track.kind == "budget":
            found.append("[reproduce] is for time_to_target tracks: a budget run's steps depend on its speed")
        if self.runs_per_submission < 1 or min(self.loss_abs_tolerance, self.metric_abs_tolerance) < 0:
            found.append("[reproduce] needs runs_per_submission >= 1 and tolerances >= 0")
        if self.time_ratio_max < 1 or self.wall_s <= 0:
            found.append("[reproduce] needs time_ratio_max >= 1 and wall_s > 0")
        return found


@dataclass(frozen=True)
class Target:
    metric: str  # "val_bpb" or "core"
    higher_is_better: bool
    threshold: float  # time_to_target: the metric to reach; budget: unused (the baseline's mean, for reference)
    eval_tokens: int = 41_943_040  # val bpb budget (tokens)
    core_max_per_task: int = -1  # -1 = every example (an official CORE)
    budget_s: float | None = None  # a budget track: timed seconds of training, then the metric is what counts

    def met(self, value: float | None) -> bool | None:
        return beats(value, self.threshold, self.higher_is_better)

    def describe(self) -> str:
        if self.budget_s:
            return f"best {self.metric} in {self.budget_s:g} s"
        if not self.threshold:
            return f"{self.metric}: target not set"
        return f"{self.metric} {'>' if self.higher_is_better else '<'} {self.threshold:g}"


@dataclass(frozen=True)
class Track:
    """A track: time_to_target (the fewest timed seconds to reach the target metric, nanochat's game) or
    budget (the best metric after a fixed budget of timed seconds, autoresearch's game)."""

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
    kind: str = "time_to_target"  # KINDS
    divisions: tuple[str, ...] = ("closed",)  # which of DIVISIONS it ranks
    reproduce: Reproduce | None = None  # None: the track's runs are verified, never re-run
    path: Path | None = field(default=None, compare=False)  # where it was read from (never serialized)

    def training_config(self, overrides: dict | None = None) -> dict:
        """TrainConfig fields: the recipe, a submission's overrides, then what the track itself fixes
        (the eval's token budget, a budget track's seconds)."""
        fixed = {"eval_tokens": self.target.eval_tokens} if self.target.metric == "val_bpb" else {}
        if self.kind == "budget":
            fixed["time_budget_s"] = self.target.budget_s
        return {**self.recipe, **(overrides or {}), **fixed}

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
            **raw["dataset"] | {k: tuple(raw["dataset"].get(k, ())) for k in ("shards", "val_shards", "heldout_shards")}
        ),
        tokenizer=TokenizerSpec(**raw["tokenizer"]),
        target=Target(**raw["target"]),
        recipe=dict(raw["recipe"]),
        calibration=dict(raw.get("calibration", {})),
        kind=raw.get("kind", "time_to_target"),
        divisions=tuple(raw.get("divisions", ("closed",))),
        reproduce=Reproduce(**raw["reproduce"]) if raw.get("reproduce") else None,
        path=path,
    )


def load_track(name_or_path: str | Path) -> Track:
    path = track_path(name_or_path)
    try:
        track = track_from_dict(tomllib.loads(path.read_text()), path)
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
        raise ValueError(f"track file {path.name} is malformed ({problem}); compare with cpu-books.toml") from e
    if track.kind not in KINDS or (track.kind == "budget") != bool(track.target.budget_s):
        raise ValueError(f"track file {path.name}: kind {track.kind!r} needs [target] budget_s exactly when 'budget'")
    if not track.divisions or set(track.divisions) - set(DIVISIONS):
        raise ValueError(f"track file {path.name}: divisions {list(track.divisions)} must be some of {list(DIVISIONS)}")
    if track.reproduce is not None and (problems := track.reproduce.problems(track)):
        raise ValueError(f"track file {path.name}: {'; '.join(problems)}")
    return track


def list_tracks() -> list[Track]:
    return [load_track(p) for p in sorted(BUILTIN_DIR.glob("*.toml"))]


def save_calibration(track: Track, threshold: float, calibration: dict) -> Path:
    """Write the calibrated target into the track file and mark the track no longer provisional; the file's
    comments (why the recipe and the data are what they are) and its order stay as they were."""
    doc = tomlkit.parse(track.path.read_text())
    doc["target"]["threshold"] = threshold
    doc["provisional"] = False
    doc["calibration"] = calibration
    track.path.write_text(tomlkit.dumps(doc))
    return track.path


def format_tracks(tracks: list[Track]) -> str:
    rows = [("track", "hardware", "target", "status", "description")]
    for t in tracks:
        status = ("provisional" if t.provisional else "calibrated") + f", {'+'.join(t.divisions)}"
        rows.append((f"{t.name} v{t.version}", t.hardware.describe(), t.target.describe(), status, t.description[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4] for r in rows)
