"""Shards: split rules, clear errors for bad data dirs, hashing, and resumable verified downloads.

Downloads are tested against a local HTTP server on 127.0.0.1 that serves copies of the shared
shards, supports Range requests and can cut a transfer short.
"""

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from baseline.dataset import (
    MANIFEST,
    Shard,
    download_shards,
    list_shards,
    read_manifest,
    shard_name,
    split_files,
    write_view,
)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_val_is_the_last_shard_and_train_the_others(pretrain_dir):
    names = [p.name for p in list_shards(pretrain_dir)]
    assert names == sorted(names) and len(names) == 5
    assert [p.name for p in split_files(pretrain_dir, "val")] == names[-1:]
    assert [p.name for p in split_files(pretrain_dir, "train")] == names[:-1]


def test_missing_or_empty_data_dir_says_how_to_get_data(tmp_path):
    for data_dir in (tmp_path / "missing", tmp_path):
        with pytest.raises(FileNotFoundError) as e:
            split_files(data_dir, "train")
        assert one_line_error(e) == (
            f"no parquet shards in {data_dir}: download with `speedrun data download` or pass --data-dir"
        )


def test_one_shard_is_not_enough_for_a_split(pretrain_dir, tmp_path):
    shutil.copy(pretrain_dir / "shard_00004.parquet", tmp_path)
    with pytest.raises(ValueError, match="only 1 parquet shard .* need at least 2") as e:
        split_files(tmp_path, "val")
    one_line_error(e)
    with pytest.raises(ValueError, match="unknown split"):
        split_files(tmp_path, "test")


def test_corrupt_shard_error_names_the_file(tmp_path):
    bad = tmp_path / "shard_00000.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(ValueError, match="cannot read shard .*shard_00000.parquet.*download it again") as e:
        Shard(bad)
    one_line_error(e)


def test_truncated_shard_error_names_the_file(pretrain_dir, tmp_path):
    data = (pretrain_dir / "shard_00003.parquet").read_bytes()
    bad = tmp_path / "shard_00003.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard_00003.parquet") as e:
        Shard(bad)
    one_line_error(e)


def test_shard_reads_text_row_groups(pretrain_dir):
    shard = Shard(pretrain_dir / "shard_00003.parquet")
    assert shard.num_row_groups == 3
    texts = [t for rg in range(shard.num_row_groups) for t in shard.texts(rg)]
    assert len(texts) == 157 and all(isinstance(t, str) for t in texts)


# --- downloads ---------------------------------------------------------------------------------


class ShardServer(ThreadingHTTPServer):
    """Serves `files` (name -> bytes) with Range support; `cut[name] = n` sends only n bytes once."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), ShardHandler)
        self.files, self.cut, self.requests = files, {}, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/data"


class ShardHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        range_header = self.headers.get("Range")
        self.server.requests.append((name, range_header))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = int(range_header.removeprefix("bytes=").rstrip("-")) if range_header else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if range_header else 200)
        if range_header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.server.cut:  # promise the whole body, send part of it, hang up
            body = body[: self.server.cut.pop(name)]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(pretrain_dir):
    # Small real shards stand in for ClimbMix shard 0 and the val shard 6542.
    files = {
        shard_name(0): (pretrain_dir / "shard_00003.parquet").read_bytes(),
        shard_name(6542): (pretrain_dir / "shard_00004.parquet").read_bytes(),
    }
    srv = ShardServer(files)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def download(server, data_dir, **kwargs):
    kwargs = {"base_url": server.url, "backoff_s": 0, "progress": False, "retries": 3} | kwargs
    return download_shards([0], data_dir, **kwargs)


def test_download_adds_the_val_shard_and_records_sha256(server, tmp_path):
    paths = download(server, tmp_path)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_06542.parquet"]
    for p in paths:
        assert p.read_bytes() == server.files[p.name]
    manifest = read_manifest(tmp_path)
    assert manifest[shard_name(0)] == {
        "size": len(server.files[shard_name(0)]),
        "sha256": hashlib.sha256(server.files[shard_name(0)]).hexdigest(),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        MANIFEST,
        "shard_00000.parquet",
        "shard_06542.parquet",
    ]
    assert [p.name for p in split_files(tmp_path, "val")] == ["shard_06542.parquet"]

    server.requests.clear()
    download(server, tmp_path)  # verified files on disk are not fetched again
    assert server.requests == []


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    server.cut[shard_name(0)] = 300_000
    paths = download(server, tmp_path)
    assert paths[0].read_bytes() == server.files[shard_name(0)]
    ranges = [r for name, r in server.requests if name == shard_name(0)]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert len(ranges) == 2


def test_partial_file_from_a_killed_run_is_continued(server, tmp_path):
    data = server.files[shard_name(0)]
    (tmp_path / (shard_name(0) + ".tmp")).write_bytes(data[:1000])
    download(server, tmp_path)
    assert (tmp_path / shard_name(0)).read_bytes() == data
    assert (shard_name(0), "bytes=1000-") in server.requests


def test_checksum_mismatch_fails_and_leaves_no_shard(server, tmp_path):
    manifest = {"shards": {shard_name(0): {"size": 1, "sha256": "0" * 64}}, "note": "kept"}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="download of shard_00000.parquet failed after 3 attempts") as e:
        download(server, tmp_path)
    assert "sha256" in one_line_error(e)
    assert not (tmp_path / shard_name(0)).exists() and not (tmp_path / (shard_name(0) + ".tmp")).exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["note"] == "kept"


def test_damaged_file_on_disk_is_fetched_again(server, tmp_path):
    download(server, tmp_path)
    (tmp_path / shard_name(0)).write_bytes(b"damaged")
    download(server, tmp_path)
    assert (tmp_path / shard_name(0)).read_bytes() == server.files[shard_name(0)]


def test_missing_shard_and_bad_index_fail_clearly(server, tmp_path):
    with pytest.raises(RuntimeError, match="download of shard_00001.parquet failed after 2 attempts"):
        download_shards([1], tmp_path, base_url=server.url, backoff_s=0, progress=False, retries=2)
    with pytest.raises(ValueError, match=r"out of range: ClimbMix has shards 0..6542"):
        download_shards([6543], tmp_path, base_url=server.url, progress=False)


def test_a_data_view_declares_its_splits_and_lacks_the_others(pretrain_dir, tmp_path):
    files = list_shards(pretrain_dir)
    view = write_view(tmp_path / "train", {"train": files[:2]})
    assert split_files(view, "train") == [view / f.name for f in files[:2]]
    assert (view / files[0].name).resolve() == files[0].resolve()  # links, not copies
    assert not (view / files[-1].name).exists()  # the val shard is not in a training view
    with pytest.raises(ValueError, match="without a val split"):
        split_files(view, "val")
    val = write_view(tmp_path / "val", {"val": files[-1:]})
    assert split_files(val, "val") == [val / files[-1].name]
