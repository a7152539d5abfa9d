"""The layers hold: import-linter's contracts pass, a wrong import fails them, and no file names a machine path."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "sandbox", "baseline", "eval", "submissions", "harness", "leaderboard")
LINT_IMPORTS = shutil.which("lint-imports")
needs_linter = pytest.mark.skipif(
    LINT_IMPORTS is None, reason="import-linter is not installed: pip install -e '.[dev]'"
)


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with pyproject's contracts over the packages under `root` (and nothing else on the path)."""
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_linter
def test_the_layer_contracts_are_kept():
    result = lint(REPO)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    "module,line,contract",
    [
        ("harness/runner.py", "import leaderboard.app", "one-way layers"),  # the runner side importing the service side
        ("leaderboard/crud.py", "import harness.runner", "one-way layers"),  # and the reverse
        ("baseline/train.py", "import eval.bpb", "one-way layers"),  # the frozen trainer importing a higher layer
        ("leaderboard/checks.py", "import submissions.contract", "the service never imports submitted code"),
        ("leaderboard/models.py", "import leaderboard.app", "no import cycles"),
    ],
)
@needs_linter
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.toml"))
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # a wrong import\n")
    result = lint(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), broken


def test_no_file_outside_the_tests_names_a_path_of_one_machine():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    machine = (str(REPO.parent) + "/", "/root/", "/home/", "/Users/", "/tmp/", str(Path.home()) + "/")
    offenders = []
    for name in listed.stdout.splitlines():
        path = REPO / name
        if name.startswith("tests/") or not path.is_file() or path.suffix in (".parquet", ".safetensors"):
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {m}" for m in machine if m in text]
    assert not offenders, offenders
