"""Messages the server shows never carry its absolute paths: `redact` keeps a path's last component only.

redact("FileNotFoundError: /srv/lb/storage/bundles/ab12/meta.json")  -> "FileNotFoundError: …/meta.json"
"""

import re

# Two or more /-separated components from a root (or a drive-less home ~/): a machine's path, not a message.
_PATH = re.compile(r"(?:~|(?<![\w.:/]))(?:/[\w.@+-]+){2,}/?")


def redact(text: str) -> str:
    return _PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
