"""Writing one benchmark's section of RESULTS.md without touching the others."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(results: Path, section: str, heading: str) -> None:
    """Replace (or add) the section that starts with ``heading``, keeping the others."""
    existing = results.read_text() if results.exists() else "# Benchmark results\n\n"
    if heading in existing:
        before, _, after = existing.partition(heading)
        rest = after.split("\n## ", 1)
        after = "## " + rest[1] if len(rest) > 1 else ""
        existing = before + section + ("\n" + after if after else "")
    else:
        existing = existing.rstrip("\n") + "\n\n" + section
    results.write_text(existing)


def machine(*versions: str) -> str:
    """The line that says where and when a measurement was made."""
    parts = [
        platform.processor() or platform.machine(),
        f"{os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
        *versions,
        time.strftime("%Y-%m-%d"),
    ]
    return f"Machine: {', '.join(parts)}."


def publish(lines: list[str], heading: str, write: bool) -> None:
    """Print a benchmark's section and, unless told not to, put it in RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(RESULTS, text, heading)
