"""The CORE eval bundle: where it lives, its download, and reading its files with clear errors.

Layout (nanochat's `eval_bundle.zip`, DCLM's CORE tasks; fact sheet §7.2):

    core.yaml            icl_tasks: label, dataset_uri, num_fewshot [k], icl_task_type,
                         continuation_delimiter (default " ")
    eval_meta_data.csv   one row per task: "Eval Task", "Random baseline" (in percent)
    eval_data/<uri>      one JSON object per line

Location: `--eval-bundle DIR`, else $SPEEDRUN_EVAL_BUNDLE, else ~/.cache/speedrun/eval_bundle, which
is downloaded from Karpathy's public bucket on first use (resumable; the zip's sha256 is kept in
`download.json` next to the files). Every result records `content_sha256(...)`, a hash of exactly
the files that define the scores, so two results are comparable only if their hashes agree.
"""

import csv
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from baseline.download import transfer, with_retries
from protocol.hashing import file_sha256
from protocol.paths import eval_bundle_dir

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
ENV_VAR = "SPEEDRUN_EVAL_BUNDLE"
CORE_YAML, META_CSV, DATA_DIR, DOWNLOAD_RECORD = "core.yaml", "eval_meta_data.csv", "eval_data", "download.json"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
# The 22 tasks of CORE (DCLM "low variance" set, the order of nanochat's core.yaml). A score is
# official only if all of them were evaluated in full.
CORE_TASKS = (
    "hellaswag_zeroshot",
    "jeopardy",
    "bigbench_qa_wikidata",
    "arc_easy",
    "arc_challenge",
    "copa",
    "commonsense_qa",
    "piqa",
    "openbook_qa",
    "lambada_openai",
    "hellaswag",
    "winograd",
    "winogrande",
    "bigbench_dyck_languages",
    "agi_eval_lsat_ar",
    "bigbench_cs_algorithms",
    "bigbench_operators",
    "bigbench_repeat_copy_logic",
    "squad",
    "coqa",
    "boolq",
    "bigbench_language_identification",
)


@dataclass(frozen=True)
class TaskSpec:
    """One task of core.yaml, joined with its random baseline from eval_meta_data.csv."""

    label: str
    dataset_uri: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # percent, as in the csv

    def path(self, bundle_dir: Path) -> Path:
        return Path(bundle_dir) / DATA_DIR / self.dataset_uri


# ------------------------------------------------------------------ location and download


def locate(eval_bundle: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """The bundle directory: the argument, else $SPEEDRUN_EVAL_BUNDLE, else the cache (fetched if absent)."""
    given = eval_bundle or os.environ.get(ENV_VAR)
    if given:
        path = Path(given).expanduser()
        if not (path / CORE_YAML).is_file():
            source = "--eval-bundle" if eval_bundle else f"${ENV_VAR}"
            raise FileNotFoundError(
                f"{path} ({source}) has no {CORE_YAML}: pass the directory that holds core.yaml, "
                "eval_meta_data.csv and eval_data/"
            )
        return path
    default = eval_bundle_dir()
    if not (default / CORE_YAML).is_file():
        if not download:
            raise FileNotFoundError(f"no eval bundle at {default}: pass --eval-bundle DIR or set ${ENV_VAR}")
        download_bundle(default)
    return default


def download_bundle(
    dest: str | os.PathLike,
    url: str = BUNDLE_URL,
    *,
    expected_sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch the zip to `<dest>.zip.tmp` (continuing a partial one), check it, unpack it to `dest`.

    The zip's sha256 is checked against `expected_sha256` when given and always recorded in
    `dest/download.json`. The unpacked tree is renamed into place only when complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".zip.tmp")
    fix = f"check the network and run again (the partial file {tmp} resumes), or pass --eval-bundle DIR"
    size = with_retries(
        lambda: transfer(url, tmp, timeout_s), what=f"download of {url}", fix=fix, retries=retries, backoff_s=backoff_s
    )
    sha = file_sha256(tmp)
    if expected_sha256 is not None and sha != expected_sha256:
        tmp.unlink()
        raise ValueError(f"{url} has sha256 {sha}, expected {expected_sha256}: the bundle changed upstream")
    _unpack(tmp, dest)
    (dest / DOWNLOAD_RECORD).write_text(json.dumps({"url": url, "zip_sha256": sha, "zip_bytes": size}, indent=1))
    tmp.unlink()
    return dest


def _unpack(zip_path: Path, dest: Path) -> None:
    """Extract next to `dest`, find the folder holding core.yaml (the zip's top folder), rename it in."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as z:
                z.extractall(staging)
        except zipfile.BadZipFile as e:
            zip_path.unlink()
            raise ValueError(f"{zip_path} is not a zip file ({e}); run again to download it afresh") from e
        roots = sorted(p.parent for p in staging.rglob(CORE_YAML))
        if not roots:
            raise ValueError(f"{zip_path} holds no {CORE_YAML}: not a CORE eval bundle")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(roots[0], dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def content_sha256(bundle_dir: str | os.PathLike, specs: list[TaskSpec]) -> str:
    """sha256 over (relative path, sha256) of core.yaml, the csv and every present task file, sorted."""
    bundle_dir = Path(bundle_dir)
    files = {CORE_YAML, META_CSV} | {f"{DATA_DIR}/{s.dataset_uri}" for s in specs if s.path(bundle_dir).is_file()}
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{file_sha256(bundle_dir / rel)}\n".encode())
    return h.hexdigest()


def download_record(bundle_dir: str | os.PathLike) -> dict | None:
    path = Path(bundle_dir) / DOWNLOAD_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------ reading


def read_tasks(bundle_dir: str | os.PathLike) -> list[TaskSpec]:
    """core.yaml's tasks in file order, each with its random baseline; bad entries fail with file and task."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / CORE_YAML
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML ({e}): re-download the bundle") from e
    entries = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path} has no `icl_tasks` list: re-download the bundle")
    baselines = read_random_baselines(bundle_dir / META_CSV)
    specs = []
    for i, entry in enumerate(entries):
        where = f"{path} task #{i + 1}"
        missing = [k for k in ("label", "dataset_uri", "num_fewshot", "icl_task_type") if k not in entry]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}: fix core.yaml or re-download the bundle")
        label, task_type = entry["label"], entry["icl_task_type"]
        if task_type not in TASK_TYPES:
            raise ValueError(
                f"{where} ({label}) has unknown icl_task_type {task_type!r}: expected one of {', '.join(TASK_TYPES)}"
            )
        if label not in baselines:
            raise ValueError(f"{bundle_dir / META_CSV} has no row for task {label!r}: re-download the bundle")
        shots = entry["num_fewshot"]
        specs.append(
            TaskSpec(
                label=label,
                dataset_uri=entry["dataset_uri"],
                task_type=task_type,
                num_fewshot=int(shots[0] if isinstance(shots, list) else shots),
                continuation_delimiter=entry.get("continuation_delimiter", " "),
                random_baseline=baselines[label],
            )
        )
    return specs


def read_random_baselines(path: Path) -> dict[str, float]:
    """Task label -> random baseline in percent, from eval_meta_data.csv."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: re-download the eval bundle")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"Eval Task", "Random baseline"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path} lacks the columns 'Eval Task' and 'Random baseline': re-download the bundle")
        baselines = {}
        for row in reader:
            try:
                baselines[row["Eval Task"]] = float(row["Random baseline"])
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"{path}:{reader.line_num}: 'Random baseline' {row['Random baseline']!r} is not a number"
                ) from e
    return baselines


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line; a missing file or a bad line fails with the path and the line number."""
    if not path.is_file():
        raise FileNotFoundError(
            f"task file {path} is missing: re-download the eval bundle, or leave the task out with --tasks"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg}): fix the line or re-download") from e
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows
