"""What commands print: strict JSON for machines, and text for people that shows every
name and header value as it is (rich markup never read from data)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

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


def plain_row(table: Table, *cells: object) -> None:
    """Add a row of plain text: brackets in a header value or a folder name are shown as
    they are, never read as rich markup (which would restyle, hide or crash on them)."""
    table.add_row(*(escape(str(cell)) for cell in cells))


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
