"""Resumable HTTP downloads: the one transfer loop behind shards, the eval bundle and chat data.

A download goes to `<file>.tmp`, continues from its current size with an HTTP Range request after
an interruption, checks the length the server announced, and only then may be renamed into place
by the caller (who also checks the checksum it knows).
"""

import time
from collections.abc import Callable
from pathlib import Path

import requests

CHUNK_BYTES = 1 << 16  # small, so that a broken transfer loses little of what arrived


def transfer(
    url: str,
    tmp: Path,
    timeout_s: float,
    on_start: Callable[[int | None, int], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Continue `tmp` from its current size with an HTTP Range request; return the full size.

    on_start(total, offset) is called once the server answered (total None if unknown), and
    on_chunk(n) for every chunk written (progress bars).
    """
    offset = tmp.stat().st_size if tmp.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with requests.get(url, headers=headers, stream=True, timeout=timeout_s) as r:
        if r.status_code == 416:
            # Nothing left to send: either the partial file is already complete (killed just
            # before the rename) or it is longer than the file, then start over.
            if r.headers.get("Content-Range", "").endswith(f"/{offset}"):
                return offset
            tmp.unlink()
            raise OSError(f"server refused to resume {url} at byte {offset}")
        r.raise_for_status()
        if r.status_code == 206 and "Content-Range" in r.headers:
            total = int(r.headers["Content-Range"].rsplit("/", 1)[1])
        elif r.status_code == 206:  # a server that omits Content-Range: trust the length of the rest
            total = offset + int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        else:  # 200: the server sent the whole file (it may not support ranges)
            offset = 0
            total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        if on_start:
            on_start(total, offset)
        with open(tmp, "ab" if offset else "wb") as f:
            for chunk in r.iter_content(CHUNK_BYTES):
                f.write(chunk)
                if on_chunk:
                    on_chunk(len(chunk))
    size = tmp.stat().st_size
    if total is not None and size != total:
        raise OSError(f"{url} ended at byte {size} of {total}")
    return size


def with_retries(attempt_once: Callable[[], object], *, what: str, fix: str, retries: int, backoff_s: float):
    """Call attempt_once until it succeeds, backing off exponentially; the last failure names the fix."""
    for attempt in range(1, retries + 1):
        try:
            return attempt_once()
        except (OSError, requests.RequestException, ValueError) as e:
            if attempt == retries:
                raise RuntimeError(f"{what} failed after {attempt} attempts ({e}); {fix}") from e
            time.sleep(backoff_s * 2 ** (attempt - 1))
