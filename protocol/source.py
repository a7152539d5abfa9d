"""A submission's source as it travels: one tar archive of exactly the files its hash covers.

    data = pack_source(Path("submissions/my_idea"))              # the runner, at registration: source.tar's bytes
    path = unpack_source(data, dest, name="my_idea")              # the server at upload, the sandbox before a re-run
    check_source(data, dest, name="my_idea", expected=record.submission.hash)   # unpack, then compare the hash

Layout: a folder submission is `<name>/<relative path>` for every file its hash covers
(protocol.hashing.folder_or_file_hash: bytecode and hidden files are left out), a single-file one is
`<name>.py`; member metadata is fixed (mtime 0, owner 0, mode 644), so the same source packs to the
same bytes. What the server re-runs is what this archive holds, so unpacking trusts nothing in it:
- regular files only: no symbolic or hard links, devices or FIFOs (a link could point the re-run, or
  the server, at a file of the host);
- every name stays under its top folder: no absolute path, no `..`, no hidden or odd characters, at
  most MAX_DEPTH folders deep, no name twice;
- text source only (SOURCE_SUFFIXES, UTF-8, no NUL byte), at most MAX_FILES files, MAX_FILE_BYTES each
  and MAX_TOTAL_BYTES in all: a submission is code, and the cap keeps it far below the size of any
  track's trained weights (cpu-books' d4 model is ~40 MB), so no source can carry a trained model into
  its own re-run.
Each refusal is a SourceError (a ValueError) of one line naming the member and the fix.
"""

import io
import re
import tarfile
from pathlib import Path, PurePosixPath

from protocol.hashing import ALL_FILES, NOT_CONTENT, folder_or_file_hash, tree_files

SOURCE_FILE = "source.tar"  # in a run directory and in a bundle
SOURCE_SUFFIXES = (".py", ".toml", ".md", ".txt", ".rst", ".json", ".yaml", ".yml", ".cfg", ".ini")
MAX_FILES = 100
MAX_FILE_BYTES = 512 * 1024
MAX_TOTAL_BYTES = 2 * 1024**2
MAX_DEPTH = 8
# tar adds a 512-byte header (a PAX header for a long name: two more blocks) and pads each file to 512 bytes
MAX_ARCHIVE_BYTES = MAX_TOTAL_BYTES + MAX_FILES * 2048 + 10 * 1024
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")  # a path component: no hidden files, no `..`


class SourceError(ValueError):
    """A source archive (or a folder to pack) breaks a rule above; the message names the member and the fix."""


def _check_content(rel: str, data: bytes) -> None:
    if not rel.endswith(SOURCE_SUFFIXES):
        raise SourceError(
            f"submission file {rel[:200]!r} is not text source ({', '.join(SOURCE_SUFFIXES)}): a submission is code; "
            "keep data and binaries out of its folder"
        )
    if len(data) > MAX_FILE_BYTES:
        raise SourceError(f"submission file {rel[:200]!r} is {len(data):,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    try:
        if "\0" in data.decode("utf-8"):
            raise UnicodeDecodeError("utf-8", data, 0, 1, "a NUL byte")
    except UnicodeDecodeError:
        raise SourceError(f"submission file {rel[:200]!r} is not UTF-8 text: save it as UTF-8") from None


def _check_name(name: str) -> None:
    if not NAME.match(name) or name in (".", ".."):
        raise SourceError(
            f"submission name {name[:100]!r} cannot name a source folder: use letters, digits, _ . + - (not hidden)"
        )


def pack_source(path: str | Path) -> bytes:
    """source.tar's bytes for a submission folder (or single .py file); SourceError for what it may not hold."""
    path = Path(path)
    if path.is_dir():
        root, files = path, sorted(tree_files(path, include=ALL_FILES, exclude=NOT_CONTENT))
        arcnames = [f"{path.name}/{rel}" for rel in files]
    else:
        root, files, arcnames = path.parent, [path.name], [path.name]
    _check_name(path.stem if path.is_file() else path.name)
    if len(files) > MAX_FILES:
        raise SourceError(f"the submission holds {len(files)} files, over the limit of {MAX_FILES}: keep it to code")
    buf, total = io.BytesIO(), 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, arcname in zip(files, arcnames, strict=True):
            file = root / rel
            if file.is_symlink():
                raise SourceError(f"submission file {rel!r} is a symbolic link: copy the file itself into the folder")
            data = file.read_bytes()
            _check_content(rel, data)
            total += len(data)
            if total > MAX_TOTAL_BYTES:
                raise SourceError(
                    f"the submission's files are over {MAX_TOTAL_BYTES:,} bytes together: keep it to code"
                )
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _member_path(member: tarfile.TarInfo, name: str) -> PurePosixPath:
    """The member's path under the archive's top, checked: it names no place outside the top folder."""
    raw = member.name
    if raw.startswith("/") or "\\" in raw or "\0" in raw:
        raise SourceError(f"source member {raw[:100]!r} has an absolute or odd path: names are relative, with /")
    parts = PurePosixPath(raw).parts
    if len(parts) > MAX_DEPTH + 1:
        raise SourceError(f"source member {raw[:100]!r} lies over {MAX_DEPTH} folders deep")
    for part in parts:
        if part in (".", "..") or not NAME.match(part):
            raise SourceError(
                f"source member {raw[:100]!r} has the path part {part[:50]!r}: no `..`, hidden or odd names"
            )
    single = parts == (f"{name}.py",)
    if not single and (len(parts) < 2 or parts[0] != name):
        raise SourceError(f"source member {raw[:100]!r} is not under {name}/ (nor the single file {name}.py)")
    return PurePosixPath(*parts)


def unpack_source(data: bytes, dest: str | Path, *, name: str) -> Path:
    """Write the archive's files under `dest` (a new, empty folder), every rule checked; the submission's path."""
    _check_name(name)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise SourceError(f"{SOURCE_FILE} is {len(data):,} bytes, over the limit of {MAX_ARCHIVE_BYTES:,}")
    seen: set[PurePosixPath] = set()
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                rel = _member_path(member, name)
                if member.isdir():
                    continue
                if not member.isfile():
                    kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                    raise SourceError(f"source member {member.name[:100]!r} is {kind}: the source holds files only")
                if rel in seen:
                    raise SourceError(f"source member {member.name[:100]!r} appears twice")
                seen.add(rel)
                if len(seen) > MAX_FILES:
                    raise SourceError(f"{SOURCE_FILE} holds over {MAX_FILES} files: keep the submission to code")
                if member.size > MAX_FILE_BYTES:
                    raise SourceError(f"source member {member.name[:100]!r} is over the limit of {MAX_FILE_BYTES:,}")
                content = tar.extractfile(member).read()
                _check_content(member.name, content)
                total += len(content)
                if total > MAX_TOTAL_BYTES:
                    raise SourceError(f"{SOURCE_FILE} unpacks to over {MAX_TOTAL_BYTES:,} bytes: keep it to code")
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as f:  # x: never through something already there
                    f.write(content)
    except (tarfile.TarError, EOFError) as e:
        raise SourceError(f"{SOURCE_FILE} is not a readable tar archive ({type(e).__name__})") from None
    if not seen:
        raise SourceError(f"{SOURCE_FILE} holds no files: `speedrun run` packs the submission it ran")
    single = dest / f"{name}.py"
    if single.is_file() and len(seen) > 1:
        raise SourceError(f"{SOURCE_FILE} holds {name}.py and a folder {name}/: a submission is one of them")
    return single if single.is_file() else dest / name


def check_source(data: bytes, dest: str | Path, *, name: str, expected: str | None) -> Path:
    """unpack_source, then the unpacked submission must hash to `expected` (the record's submission hash)."""
    path = unpack_source(data, dest, name=name)
    found = folder_or_file_hash(path)
    if found != expected:
        raise SourceError(
            f"{SOURCE_FILE} holds files that hash to {found[:12]}…, but the record says submission {name} has hash "
            f"{str(expected)[:12]}…: send the source the run was made with (`speedrun submit` packs it)"
        )
    return path
