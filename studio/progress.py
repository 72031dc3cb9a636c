"""A plain progress callback, so the engine reports progress without knowing who listens."""
from __future__ import annotations

from typing import Callable, Protocol


class Progress(Protocol):
    def __call__(self, fraction: float, message: str = "") -> None: ...


def null_progress(fraction: float, message: str = "") -> None:
    """Progress that goes nowhere (the default for library calls)."""


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """A sub-task's progress mapped into [start, end] of its parent's."""

    def report(fraction: float, message: str = "") -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    return report


ProgressFn = Callable[[float, str], None]
