"""Reading and writing pipeline files: JSON Lines, and outputs written all or nothing, so an
interrupted stage never leaves a half-written file."""

import json
import os
from pathlib import Path


def write_atomically(path, content):
    """Write text (UTF-8) or bytes to path through a temporary file in the same folder, renamed into
    place at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a part
    finally:
        tmp.unlink(missing_ok=True)  # only left if writing failed


def to_jsonl(rows):
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
