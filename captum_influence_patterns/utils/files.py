"""Plain JSON output: non-finite floats as null, and atomic writes.

Readers of a file written here see the old file or the whole new one, never a part.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Callable, Optional


def finite(value: float) -> Optional[float]:
    """``value`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    return float(value) if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None, recursively."""
    if isinstance(value, float):
        return finite(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` via a temporary file and an atomic rename."""
    write_text_atomic(path, json.dumps(data, indent=1, allow_nan=True))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``: readers see the old file or the whole new one."""
    write_bytes_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_bytes_atomic(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Call ``write(binary_handle)`` on a temporary file, then rename it to ``path``.

    The temporary file is created with mode 0666 under the process umask (the
    permissions a plain ``open()`` gives) without touching the umask, which is
    process-wide, and is flushed to disk before the rename.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def folder_problem(path: str | os.PathLike) -> Optional[str]:
    """Why a folder cannot be created or written at ``path``, or None when it can.

    Nothing is created: the nearest existing folder on the way up must be a writable
    directory, so an error found later leaves no empty folder behind.
    """
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        return f"{here} is a file"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{here} is not writable"
    return None
