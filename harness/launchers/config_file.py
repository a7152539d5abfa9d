"""A launcher's TOML config file merged with its command-line flags, read in one place."""

import tomllib
from dataclasses import fields
from pathlib import Path


def merged_values(config_class, path: str | Path | None, overrides: dict) -> dict:
    """The file's keys (if a path is given; unknown keys are an error naming the known ones), then
    `overrides` that are not None (the flags win)."""
    raw = tomllib.loads(Path(path).read_text()) if path else {}
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known keys are {sorted(known)}")
    return {**raw, **{k: v for k, v in overrides.items() if v is not None}}
