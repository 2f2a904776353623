"""Crash-safe writes: every output goes to a temporary name in the same folder, then is renamed; a folder of
outputs (a report) is built under a temporary name beside its final one and swapped in whole."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the file that could not be written
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp_path):
            # A write into the temporary file (a full disk): name the file the user knows.
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_STALE_BUILD_S = 24 * 3600  # a temporary folder this old is a leftover of a killed build, not a live one


def _clear_leftovers(path: Path) -> None:
    now = time.time()
    for p in path.parent.glob(f".{path.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_BUILD_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces the folder ``path`` whole.

    Until the block has finished, ``path`` keeps its previous content untouched; on an exception (or a kill) the
    temporary folder is removed (or left under a hidden ``.<name>.tmp-*`` name, cleared a day later), so a
    reader never sees files of two builds mixed. The swap is two renames on the same filesystem: the old folder
    aside, the new one in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old.exists() and not path.exists():
            os.replace(old, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np  # here, not at the top: io is imported by everything and numpy is needed rarely

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
