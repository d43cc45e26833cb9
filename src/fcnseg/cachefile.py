"""The measurement caches: `--amp auto`'s (amp.json) and FastFCN's kernel choices (kernels.json).

Each is one JSON document {"about": ..., "entries": {key: entry}} in $FCNSEG_CACHE (unset:
~/.cache/fcnseg). An unreadable file is ignored with a warning (and rewritten by the next
measurement); it is written atomically (safety.write_bytes), and a folder that cannot be
written only costs measuring again in the next process. Entries record the load average they
were measured under: `busy` tells whether other programs shared the cores then.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .safety import write_bytes

__all__ = ["busy", "cache_path", "load_average", "read_entries", "write_entries"]


def cache_path(name: str) -> Path:
    """$FCNSEG_CACHE/name, else ~/.cache/fcnseg/name."""
    root = os.environ.get("FCNSEG_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "fcnseg") / name


def read_entries(path: Path, what: str, stacklevel: int = 2) -> dict:
    """The file's entries; {} if it does not exist, or (with a warning naming `what` and the
    path) if it cannot be read as such a document."""
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())["entries"]
        if not isinstance(entries, dict):
            raise TypeError("'entries' is not a mapping")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(
            f"ignoring the unreadable {what} {path} ({type(e).__name__}: {e}); measuring again "
            "and rewriting it (or delete the file)",
            stacklevel=stacklevel + 1,
        )
        return {}


def write_entries(path: Path, entries: dict, about: str, what: str, stacklevel: int = 2) -> None:
    """Write the document atomically; warn (naming `what` and the path) if it cannot be."""
    doc = {"about": about, "entries": entries}
    try:
        write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode(), what=what)
    except OSError as e:  # a read-only home must not stop training or inference
        warnings.warn(
            f"cannot write the {what} {path} ({e.strerror or e}): it will be measured again in "
            "the next process; set FCNSEG_CACHE to a writable folder",
            stacklevel=stacklevel + 1,
        )


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def busy(load: float | None) -> bool:
    """More runnable processes than cores: a measurement then shared the machine."""
    return load is not None and load > (os.cpu_count() or 1)
