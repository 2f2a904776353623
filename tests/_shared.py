"""Where the real data is: ``shared/data/<name>`` beside the clone (``../shared``), or beside a folder of
worktrees (``../../shared``), or the folder an environment variable names. A user's clone has none: the tests
that read it skip."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
ENV = {"isic2017-256": "ATTNMEL_ISIC2017_256", "artefacts": "ATTNMEL_ARTEFACTS", "real": "ATTNMEL_REAL_DATA"}


def shared_data(name: str) -> Path:
    """The real data folder ``name`` (``$ATTNMEL_...`` of :data:`ENV` when set); when it exists nowhere, the
    path beside the clone, which does not exist, so the caller's skip condition holds."""
    env = ENV.get(name)
    if env and os.environ.get(env):
        return Path(os.environ[env])
    for base in (_REPO.parent, _REPO.parent.parent):
        if (base / "shared/data" / name).is_dir():
            return base / "shared/data" / name
    return _REPO.parent / "shared/data" / name
