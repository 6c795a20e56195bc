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
    """The time left of work counted in units of one or more kinds, each at the pace of its
    own units timed so far; units done without being timed (reused from an earlier run) do
    not count in the pace.

    ``adapt`` counts training epochs and passes (a run that trains nothing: the unadapted
    model, AdaBN), which differ in cost. Before any unit of a kind is timed, it is taken at
    the pace of the other kind, and when that makes the estimate too low (a training epoch
    at the pace of a pass, which is part of every epoch) the text says "at least".

    Example:
        >>> estimate = Estimate(total=12)
        >>> estimate.done(1, seconds=40.0)
        >>> estimate.text()
        'about 7 min 20 s left'
    """

    def __init__(self, total: float | dict[str, float], *, cheaper: str | None = None) -> None:
        """``total``: the units (of one kind, or by kind); ``cheaper``: the kind whose pace
        is a lower bound for the others'."""
        totals = {"": float(total)} if isinstance(total, int | float) else dict(total)
        self.left = {kind: float(units) for kind, units in totals.items()}
        self.timed = dict.fromkeys(totals, 0.0)
        self.seconds = dict.fromkeys(totals, 0.0)
        self.cheaper = cheaper

    def done(self, units: float, seconds: float | None = None, kind: str = "") -> None:
        """``units`` of ``kind`` finished, in ``seconds`` (None: reused, not timed)."""
        self.left[kind] = max(0.0, self.left[kind] - units)
        if seconds is not None:
            self.timed[kind] += units
            self.seconds[kind] += seconds

    def _left(self) -> tuple[float | None, bool]:
        """Seconds left (None: nothing timed yet), and whether that is only a lower bound."""
        paces = {k: self.seconds[k] / self.timed[k] for k in self.left if self.timed[k] > 0}
        if not paces:
            return None, False
        total, bound = 0.0, False
        for kind, units in self.left.items():
            if units <= 0:
                continue
            if kind in paces:
                total += paces[kind] * units
                continue
            borrowed = next(iter(paces))
            total += paces[borrowed] * units
            bound = bound or borrowed == self.cheaper
        return total, bound

    def seconds_left(self) -> float | None:
        return self._left()[0]

    def text(self) -> str:
        """``about 4 min left``, ``at least 2 min left``, or ``time left not known yet``."""
        left, bound = self._left()
        if left is None:
            return "time left not known yet"
        return f"{'at least' if bound else 'about'} {duration_text(left)} left"
