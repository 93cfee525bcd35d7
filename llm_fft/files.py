"""Writing outputs all or nothing, so an interrupted stage never leaves a half-written file."""

import os
from pathlib import Path


def write_atomically(path, text):
    """Write text to path through a temporary file in the same folder, renamed into place at the end."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a part
    finally:
        tmp.unlink(missing_ok=True)  # only left if writing failed
