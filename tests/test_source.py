"""The submission's source as it travels (protocol/source.py), and the upload's check of it: each attack refused.

An archive is built by hand for every trick a hostile source.tar could play on whoever unpacks it (the
server at upload, the sandbox before a re-run): links, `..`, absolute paths, hidden files, binaries,
sizes, a second top folder. Each is a SourceError with one line naming the member, and at upload a 422
(413 over the member's byte limit) with nothing left in storage.
"""

import io
import json
import os
import tarfile

import pytest

from protocol.hashing import folder_or_file_hash
from protocol.source import (
    MAX_FILE_BYTES,
    MAX_FILES,
    SOURCE_FILE,
    SourceError,
    check_source,
    pack_source,
    unpack_source,
)
from tests.reproduction_fixtures import SUBMISSION, reproducing_env, submission_folder, with_source
from tests.test_leaderboard_api import golden_bundles, upload  # noqa: F401 -- shared fixture
from tests.test_leaderboard_attacks import leftovers


def archive(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A tar of (name, tar type, content) members, written as given (tarfile's own checks are for readers)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind or tarfile.REGTYPE
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = data.decode()
                tar.addfile(info)
            else:
                info.size = len(data) if info.type == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


GOOD = (f"{SUBMISSION}/submission.py", None, b"METADATA = {}\n")


def test_a_packed_folder_unpacks_to_the_same_hash(tmp_path):
    folder = submission_folder(tmp_path / "src")
    (folder / "lib").mkdir()
    (folder / "lib" / "kernels.py").write_text("def f():\n    return 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0\1")  # not content: neither hashed nor packed
    data = pack_source(folder)
    assert data == pack_source(folder)  # the same source packs to the same bytes
    path = check_source(data, tmp_path / "out", name=SUBMISSION, expected=folder_or_file_hash(folder))
    assert path == tmp_path / "out" / SUBMISSION and (path / "lib" / "kernels.py").is_file()
    assert not (path / "__pycache__").exists()


def test_a_single_file_submission_round_trips(tmp_path):
    single = tmp_path / "my_idea.py"
    single.write_text('METADATA = {"authors": ["a"], "description": "d"}\n')
    path = check_source(pack_source(single), tmp_path / "out", name="my_idea", expected=folder_or_file_hash(single))
    assert path.read_text() == single.read_text()


def test_a_source_that_does_not_match_its_hash_is_refused(tmp_path):
    folder = submission_folder(tmp_path / "src")
    expected = folder_or_file_hash(folder)
    (folder / "submission.py").write_text("METADATA = {'edited': True}\n")
    with pytest.raises(SourceError, match=r"hash to .*but the record says submission golden-sub has hash"):
        check_source(pack_source(folder), tmp_path / "out", name=SUBMISSION, expected=expected)


def test_packing_refuses_what_a_source_may_not_hold(tmp_path):
    folder = submission_folder(tmp_path / "src")
    (folder / "weights.bin").write_bytes(os.urandom(64))
    with pytest.raises(SourceError, match=r"weights.bin.*not text source"):
        pack_source(folder)
    (folder / "weights.bin").unlink()
    (folder / "link.py").symlink_to(tmp_path / "elsewhere.py")
    (tmp_path / "elsewhere.py").write_text("x = 1\n")
    with pytest.raises(SourceError, match="symbolic link"):
        pack_source(folder)


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(f"{SUBMISSION}/../../etc/cron.d/x.py", None, b"x")], r"no `\.\.`"),
        ([("/etc/passwd.py", None, b"x")], "absolute"),
        ([(f"{SUBMISSION}/.bashrc.py", None, b"x")], "hidden"),
        ([(f"{SUBMISSION}/a\\..\\b.py", None, b"x")], "odd path"),
        ([GOOD, (f"{SUBMISSION}/link.py", tarfile.SYMTYPE, b"/etc/passwd")], "a link"),
        ([GOOD, (f"{SUBMISSION}/hard.py", tarfile.LNKTYPE, f"{SUBMISSION}/submission.py".encode())], "a link"),
        ([GOOD, (f"{SUBMISSION}/dev.py", tarfile.CHRTYPE, b"")], "not a regular file"),
        ([GOOD, (f"{SUBMISSION}/fifo.py", tarfile.FIFOTYPE, b"")], "not a regular file"),
        ([GOOD, GOOD], "appears twice"),
        ([("other/submission.py", None, b"x")], "not under golden-sub/"),
        ([GOOD, (f"{SUBMISSION}/model.safetensors", None, b"\0" * 100)], "not text source"),
        ([GOOD, (f"{SUBMISSION}/blob.py", None, b"\xff\xfe\0\1")], "not UTF-8"),
        ([GOOD, (f"{SUBMISSION}/big.py", None, b"#" * (MAX_FILE_BYTES + 1))], "over the limit"),
        ([(f"{SUBMISSION}/f{i}.py", None, b"x = 1\n") for i in range(MAX_FILES + 1)], "over 100 files"),
        ([(f"{SUBMISSION}/" + "d/" * 12 + "deep.py", None, b"x")], "folders deep"),
        ([(f"{SUBMISSION}.py", None, b"x"), GOOD], "a submission is one of them"),
        ([], "holds no files"),
    ],
)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(tmp_path, members, match):
    dest = tmp_path / "inner" / "out"
    with pytest.raises(SourceError, match=match):
        unpack_source(archive(members), dest, name=SUBMISSION)
    assert all(p == dest.parent or p.is_relative_to(dest) for p in tmp_path.rglob("*"))  # nothing outside dest
    assert not any(p.is_symlink() or not (p.is_dir() or p.is_file()) for p in tmp_path.rglob("*"))


def test_garbage_is_not_an_archive(tmp_path):
    with pytest.raises(SourceError, match="not a readable tar archive"):
        unpack_source(b"\x1f\x8b not a tar at all" * 40, tmp_path / "out", name=SUBMISSION)


# ------------------------------------------------------------------ at upload


def test_an_upload_whose_source_does_not_match_the_record_is_422(tmp_path, golden_bundles):  # noqa: F811
    env = reproducing_env(tmp_path / "lb")
    honest = with_source(golden_bundles["r0"], tmp_path / "honest")
    record = json.loads(honest["record.json"].read_text())
    forged = dict(honest, **{"record.json": tmp_path / "forged-record.json"})
    for ref in (record["submission"], record["provenance"]["submission"]):
        ref["hash"] = "b" * 64  # the source of another submission than the record names
    forged["record.json"].write_text(json.dumps(record))
    r = upload(env, forged, env.alice)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "source.tar holds files that hash to" in detail and "bbbbbbbbbbbb" in detail, detail
    assert leftovers(env) == []
    assert upload(env, honest, env.alice).status_code == 201


def test_a_record_that_names_two_submission_hashes_is_422(tmp_path, golden_bundles):  # noqa: F811
    env = reproducing_env(tmp_path / "lb")
    paths = with_source(golden_bundles["r0"], tmp_path / "b")
    record = json.loads(paths["record.json"].read_text())
    record["provenance"]["submission"]["hash"] = "c" * 64
    paths["record.json"].write_text(json.dumps(record))
    r = upload(env, paths, env.alice)
    assert r.status_code == 422 and "provenance" in r.json()["detail"]


def test_a_bundle_without_source_on_a_track_that_reruns_is_422(tmp_path, golden_bundles):  # noqa: F811
    env = reproducing_env(tmp_path / "lb")
    r = upload(env, golden_bundles["r0"], env.alice)
    assert r.status_code == 422 and f"lacks {SOURCE_FILE}" in r.json()["detail"]


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(f"{SUBMISSION}/../../../storage/bundles/x.py", None, b"x")], "`..`"),
        ([GOOD, (f"{SUBMISSION}/link.py", tarfile.SYMTYPE, b"/etc/shadow")], "a link"),
        ([GOOD, (f"{SUBMISSION}/data.npy", None, b"\x93NUMPY")], "not text source"),
    ],
)
def test_an_upload_with_a_hostile_source_is_422(tmp_path, golden_bundles, members, match):  # noqa: F811
    env = reproducing_env(tmp_path / "lb")
    r = upload(env, with_source(golden_bundles["r0"], tmp_path / "b", source=archive(members)), env.alice)
    assert r.status_code == 422 and match in r.json()["detail"], r.text
    assert leftovers(env) == [] and not list(tmp_path.glob("lb/storage/bundles/*"))


def test_an_oversized_source_is_refused_before_it_is_unpacked(tmp_path, golden_bundles):  # noqa: F811
    env = reproducing_env(tmp_path / "lb")
    huge = archive([GOOD] + [(f"{SUBMISSION}/f{i}.py", None, b"#" * 400_000) for i in range(8)])
    r = upload(env, with_source(golden_bundles["r0"], tmp_path / "b", source=huge), env.alice)
    assert r.status_code == 413 and SOURCE_FILE in r.json()["detail"], r.text
    assert leftovers(env) == []
