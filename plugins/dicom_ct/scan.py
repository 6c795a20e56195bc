"""Scanning a folder: every file read once (header only), every volume assembled."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medadapt.engine import Rejection
from medadapt.engine.pseudonym import Pseudonymizer
from medadapt.plugins.dicom_ct.headers import FileHeader, read_header
from medadapt.plugins.dicom_ct.series import Volume, assemble


@dataclass(frozen=True)
class FolderScan:
    """The volumes found in a folder and every file that could not be used."""

    volumes: list[Volume]
    rejections: list[Rejection]
    files: int


def iter_files(root: Path, recursive: bool = True) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable order, skipping hidden ones."""
    if root.is_file():
        yield root
        return
    if recursive:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in sorted(names):
                if not name.startswith("."):
                    yield Path(folder) / name
    else:
        yield from sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def scan_folder(
    root: Path,
    pseudonymizer: Pseudonymizer,
    *,
    modalities: Sequence[str] = ("CT",),
    recursive: bool = True,
    on_file: Callable[[Path], None] | None = None,
) -> FolderScan:
    """Read the header of every file under ``root`` and assemble the volumes.

    Args:
        root: a folder (or one file).
        pseudonymizer: turns identifiers into pseudonyms as they are read.
        modalities: the modalities accepted; files of others are rejected.
        recursive: whether to look into subfolders.
        on_file: called after each file, for progress.
    """
    headers: list[FileHeader] = []
    rejections: list[Rejection] = []
    count = 0
    for path in iter_files(root, recursive):
        count += 1
        result = read_header(path, pseudonymizer, modalities)
        (rejections if isinstance(result, Rejection) else headers).append(result)
        if on_file is not None:
            on_file(path)
    volumes, unplaced = assemble(headers)
    return FolderScan(volumes, rejections + unplaced, count)
