"""Small helpers that keep messages to people consistent."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """The known names closest to a misspelt one, best first.

    Example:
        >>> close_matches("augmentatons", ["augmentations", "backbone", "adaptation"])
        ['augmentations']
    """
    return difflib.get_close_matches(name, sorted(set(known)), n=limit, cutoff=0.6)


def quoted(names: Iterable[str]) -> str:
    """Names quoted and joined for a sentence.

    Example:
        >>> quoted(["resnet18", "densenet121"])
        "'resnet18', 'densenet121'"
    """
    return ", ".join(f"'{n}'" for n in names)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A suggestion to append to an error, or an empty string when nothing is close.

    Example:
        >>> did_you_mean("entropi", ["entropy", "snd"])
        " (did you mean 'entropy'?)"
    """
    matches = close_matches(name, known)
    if not matches:
        return ""
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)"
