"""A snapshot of a folder tree, to assert that a command left a dataset folder exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size, modification time and content hash: two snapshots are
    equal only if no file or folder was created, changed or removed."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
        out[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out
