"""The progress bar of every long loop (rich): label and description, bar, done / total, time left."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(enabled: bool, label: str = "", *, transient: bool = False) -> Progress:
    """A :class:`rich.progress.Progress` (use it as a context manager); ``label`` goes before each task's
    description; ``transient`` bars vanish when done."""
    columns = [
        TextColumn(label + "{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    return Progress(*columns, disable=not enabled, transient=transient)
