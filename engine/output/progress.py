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


def time_left(elapsed: float, done: float, left: float) -> float | None:
    """Seconds the rest of the work takes at the pace so far: ``elapsed`` seconds for
    ``done`` units, ``left`` units to go; None before any unit is done.

    Example:
        >>> time_left(30.0, 2, 10)
        150.0
        >>> time_left(0.0, 0, 10) is None
        True
    """
    if done <= 0:
        return None
    return max(0.0, elapsed / done * left)


def duration_text(seconds: float) -> str:
    """A duration as a person reads it, rounded as an estimate should be.

    Example:
        >>> duration_text(42), duration_text(150), duration_text(3 * 3600 + 25 * 60)
        ('42 s', '2 min 30 s', '3 h 25 min')
    """
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 600:
        minutes, rest = divmod(seconds, 60)
        rest = 10 * round(rest / 10)
        if rest == 60:
            minutes, rest = minutes + 1, 0
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


class Estimate:
    """The time left of work counted in units (epochs), from the pace of the units timed so
    far; units done without being timed (reused from an earlier run) are not counted in
    the pace.

    Example:
        >>> estimate = Estimate(total=12)
        >>> estimate.done(1, seconds=40.0)
        >>> estimate.text()
        'about 7 min 20 s left'
    """

    def __init__(self, total: float) -> None:
        self.left = float(total)
        self.timed = 0.0
        self.seconds = 0.0

    def done(self, units: float, seconds: float | None = None) -> None:
        """``units`` finished, in ``seconds`` (None: reused, not timed)."""
        self.left = max(0.0, self.left - units)
        if seconds is not None:
            self.timed += units
            self.seconds += seconds

    def seconds_left(self) -> float | None:
        return time_left(self.seconds, self.timed, self.left)

    def text(self) -> str:
        """``about 4 min left``, or ``time left not known yet``."""
        left = self.seconds_left()
        return "time left not known yet" if left is None else f"about {duration_text(left)} left"
