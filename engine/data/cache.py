"""A disk cache of arrays, keyed by what they were computed from.

Entries are NumPy ``.npy`` files named by the SHA-256 of their key, so the cache holds no
names, paths or identifiers. A write goes to a temporary file in the same folder and is
then renamed into place, which is atomic: several worker processes may fill the same cache
at once, and a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medadapt.engine.output.atomic import atomic_file

log = logging.getLogger(__name__)

#: Overrides where the cache lives.
CACHE_ENV = "MEDADAPT_CACHE_DIR"


def default_cache_dir() -> Path:
    """$MEDADAPT_CACHE_DIR, else $XDG_CACHE_HOME/medadapt, else ~/.cache/medadapt."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medadapt"


def cache_key(*parts: Any) -> str:
    """A stable hexadecimal key for JSON-serialisable parts.

    Example:
        >>> cache_key("volume", {"b": 1, "a": [1, 2]}) == cache_key("volume", {"a": [1, 2], "b": 1})
        True
    """
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ArrayCache:
    """Arrays on disk under ``root/namespace``, computed once.

    Args:
        root: the cache folder; created when first written.
        namespace: a sub-folder per kind of entry (``volumes``, ``patches``).

    Example:
        >>> import tempfile
        >>> cache = ArrayCache(Path(tempfile.mkdtemp()), "demo")
        >>> cache.get_or_compute(cache_key("x"), lambda: np.arange(3)).tolist()
        [0, 1, 2]
        >>> cache.get(cache_key("x")).tolist()
        [0, 1, 2]
    """

    def __init__(self, root: Path, namespace: str) -> None:
        self.folder = Path(root) / namespace

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached array, memory-mapped read-only, or None when absent or unreadable."""
        path = self._path(key)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring an unreadable cache entry %s (%s)", path.name, exc)
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        """Store an array atomically; a failure to write is logged, never raised."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The owner's alone, as the images it holds should be.
            with atomic_file(path, mode=0o600) as temporary, temporary.open("wb") as stream:
                np.save(stream, np.ascontiguousarray(array), allow_pickle=False)
        except OSError as exc:
            log.warning(
                "could not write to the cache in %s (%s); going on without", path.parent, exc
            )

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array, or ``compute()`` stored for next time."""
        cached = self.get(key)
        if cached is not None:
            return cached
        array = compute()
        self.put(key, array)
        return array
