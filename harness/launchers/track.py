"""What a launcher needs to know about a track: the machine one seed needs and where its data comes from.

This is the one file of `harness.launchers` that reads tracks (protocol/tracks.py): the launchers
only see the small plain records below.

    needs = track_needs("gpt2")                 # JobResources(nodes=1, gpus_per_node=8, gpu_model="H100", ...)
"""

from dataclasses import dataclass
from pathlib import Path

from baseline.dataset import VAL_SHARD
from protocol.paths import track_data_dir
from protocol.tracks import Track, load_track

CPUS_PER_GPU = 8  # a track gives CPU threads only for CPU tracks; 8 per GPU feeds one torchrun rank each
TIME_MIN = {"cpu": 30, "cuda": 240}  # default wall-clock limit of one seed's job (minutes), per hardware kind


@dataclass(frozen=True)
class JobResources:
    """One seed's job: `nodes` machines with `gpus_per_node` GPUs each, one task per node (torchrun inside)."""

    nodes: int = 1
    gpus_per_node: int = 0
    gpu_model: str | None = None  # e.g. "H100"; None on CPU tracks
    cpus_per_task: int = 1
    time_min: int = 30


@dataclass(frozen=True)
class DataNeeds:
    """Where a seed's shards come from: ClimbMix (downloaded on the machine) or a local folder to upload."""

    source: str  # "climbmix" or "local"
    num_train_shards: int | None = None  # for `speedrun data download --num-shards N` (climbmix)
    local_dir: Path | None = None  # the folder to upload (local); None when the track names none


@dataclass(frozen=True)
class TrackNeeds:
    track: str
    kind: str  # "cpu" or "cuda"
    resources: JobResources
    data: DataNeeds


def track_needs(
    name_or_path: str | Path,
    *,
    nodes: int = 1,
    time_min: int | None = None,
    cpus_per_task: int | None = None,
) -> TrackNeeds:
    """The launcher's view of a track (a name from `speedrun tracks` or a .toml path); flags override defaults."""
    track = load_track(name_or_path)
    hw = track.hardware
    cpus = cpus_per_task or hw.cpu_threads or max(hw.gpu_count, 1) * CPUS_PER_GPU
    resources = JobResources(
        nodes=nodes,
        gpus_per_node=hw.gpu_count if hw.kind == "cuda" else 0,
        gpu_model=hw.gpu_model if hw.kind == "cuda" else None,
        cpus_per_task=cpus,
        time_min=time_min or TIME_MIN.get(hw.kind, TIME_MIN["cuda"]),
    )
    return TrackNeeds(track=track.name, kind=hw.kind, resources=resources, data=_data_needs(track))


def _data_needs(track: Track) -> DataNeeds:
    ds = track.dataset
    if ds.source == "climbmix":
        # `speedrun data download --num-shards N` fetches train shards 0..N-1 and always the val shard.
        train = [int(n.removeprefix("shard_").removesuffix(".parquet")) for n in ds.shards]
        n = ds.num_train_shards or max((i + 1 for i in train if i != VAL_SHARD), default=0)
        return DataNeeds(source="climbmix", num_train_shards=n)
    local = track_data_dir(track) if ds.default_dir else None
    return DataNeeds(source=ds.source, local_dir=local)
