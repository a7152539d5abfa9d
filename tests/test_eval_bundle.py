"""The eval bundle: where it is found, a resumable verified download, and its content hash."""

import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from eval import bundle
from tests.test_eval_core import write_bundle


def zipped(root) -> bytes:
    """The bundle as the public zip lays it out: everything under a top folder `eval_bundle/`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                z.write(path, f"eval_bundle/{path.relative_to(root)}")
    return buf.getvalue()


class Server:
    """A local HTTP server for one file that honours `Range: bytes=N-` (unless told not to)."""

    def __init__(self, payload: bytes, ranges: bool = True):
        self.payload, self.requests = payload, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                body, status = server.payload, 200
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    body, status = server.payload[start:], 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.ranges = ranges
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/eval_bundle.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "server-ignores-range"])
def test_download_resumes_a_partial_file_and_records_its_sha256(tmp_path, ranges):
    payload = zipped(write_bundle(tmp_path / "src", ["copa", "piqa"]))
    server = Server(payload, ranges=ranges)
    try:
        dest = tmp_path / "cache" / "eval_bundle"
        dest.parent.mkdir()
        (dest.parent / "eval_bundle.zip.tmp").write_bytes(payload[:100])  # an interrupted earlier run
        sha = hashlib.sha256(payload).hexdigest()
        bundle.download_bundle(dest, server.url, expected_sha256=sha)
    finally:
        server.close()
    assert server.requests == ["bytes=100-"]
    assert [s.label for s in bundle.read_tasks(dest)] == ["copa", "piqa"]
    assert bundle.download_record(dest) == {"url": server.url, "zip_sha256": sha, "zip_bytes": len(payload)}
    assert not (dest.parent / "eval_bundle.zip.tmp").exists()


def test_a_changed_upstream_zip_is_refused(tmp_path):
    server = Server(zipped(write_bundle(tmp_path / "src", ["copa"])))
    try:
        with pytest.raises(ValueError, match="expected 0000"):
            bundle.download_bundle(tmp_path / "eval_bundle", server.url, expected_sha256="0000")
    finally:
        server.close()
    assert not (tmp_path / "eval_bundle").exists()


def test_location_is_the_argument_then_the_environment_then_the_cache(tmp_path, monkeypatch):
    a, b = write_bundle(tmp_path / "a", ["copa"]), write_bundle(tmp_path / "b", ["copa"])
    cache = tmp_path / "cache" / "eval_bundle"
    monkeypatch.setenv("SPEEDRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(bundle.ENV_VAR, str(b))
    assert bundle.locate(a) == a and bundle.locate() == b
    monkeypatch.delenv(bundle.ENV_VAR)
    fetched = []
    monkeypatch.setattr(bundle, "download_bundle", lambda dest: fetched.append(dest) or write_bundle(dest, ["copa"]))
    assert bundle.locate() == cache and fetched == [cache]
    assert bundle.locate() == cache and fetched == [cache]  # fetched once
    with pytest.raises(FileNotFoundError, match="has no core.yaml"):
        bundle.locate(tmp_path / "empty")


def test_content_hash_covers_the_scoring_files_only(tmp_path):
    root = write_bundle(tmp_path / "b", ["copa", "piqa"])
    specs = bundle.read_tasks(root)
    before = bundle.content_sha256(root, specs)
    (root / "download.json").write_text("{}")  # not part of the content
    assert bundle.content_sha256(root, specs) == before
    with open(root / "eval_data" / "piqa.jsonl", "a") as f:
        f.write('{"query": "Q", "choices": ["a"], "gold": 0}\n')
    assert bundle.content_sha256(root, specs) != before


def test_core_yaml_defaults(tmp_path):
    root = write_bundle(tmp_path / "b", ["copa"])
    (spec,) = bundle.read_tasks(root)
    assert (spec.num_fewshot, spec.continuation_delimiter, spec.random_baseline) == (0, " ", 25.0)
    assert spec.path(root) == root / "eval_data" / "copa.jsonl"
