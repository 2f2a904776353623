"""User-facing errors.

Anything a user can cause (bad file, bad config, missing weights) raises :class:`AttnMelError`
with a one-line message that names the file and the problem. The CLI prints it as
``attnmel: error: <message>`` and exits with status 2, never with a traceback.
"""

from __future__ import annotations

from pathlib import Path


class AttnMelError(Exception):
    """An error caused by input the user controls; its message is one line, shown as is."""


def file_error(path: str | Path, problem: str) -> AttnMelError:
    """Build the standard ``<path>: <problem>`` error."""
    return AttnMelError(f"{path}: {problem}")


class MissingMasksError(AttnMelError):
    """A split lacks the lesion (or dermoscopic-feature) masks something needs.

    Its own type so that a caller that can go on without masks (a sweep records why it scored no attention)
    decides by type, never by the message's wording.
    """


def missing_masks(path: str | Path, problem: str) -> MissingMasksError:
    """The ``<path>: <problem>`` form of :class:`MissingMasksError`."""
    return MissingMasksError(f"{path}: {problem}")
