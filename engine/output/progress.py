"""One look for progress on long work: a description, a bar, done/total and elapsed time."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(quiet: bool, transient: bool = True) -> Progress:
    """A rich progress display on stderr (so stdout stays clean for --json); off when quiet.

    Args:
        quiet: show nothing (``--quiet``, ``--json``, or not rank 0 under torchrun).
        transient: remove the bars when done; keep them for training, whose last line
            holds the final metrics.
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=transient,
    )
