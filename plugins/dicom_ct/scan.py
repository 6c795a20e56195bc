"""Scanning a folder: every file read once (header only), every volume assembled."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medadapt.engine import InvalidInputError, Pseudonymizer, Rejection
from medadapt.plugins.dicom_ct.headers import FileHeader, SegmentationFile, read_header
from medadapt.plugins.dicom_ct.series import Volume, assemble


@dataclass(frozen=True)
class FolderScan:
    """The volumes found in a folder, its DICOM SEG files, and every file that could not be
    used."""

    volumes: list[Volume]
    rejections: list[Rejection]
    files: int
    segmentations: list[SegmentationFile]


def iter_files(
    root: Path, recursive: bool = True, skipped: list[Rejection] | None = None
) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable order, skipping hidden ones.

    Args:
        skipped: gets a rejection for every entry that is not read, with the reason: a
            folder that cannot be listed, a special file (a FIFO, a socket, a device: reading
            one could wait forever), a link that leads nowhere.

    Raises:
        InvalidInputError: ``root`` does not exist or is neither a file nor a folder.
    """
    rejected = skipped if skipped is not None else []
    if not root.exists():
        raise InvalidInputError(
            f"{root}: the data folder does not exist (data.params.root in the profile)"
        )
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise InvalidInputError(f"{root}: the data root is neither a folder nor a file")

    def unreadable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else root
        rejected.append(Rejection(where, f"folder cannot be read ({error.strerror}); skipped"))

    walk = os.walk(root, onerror=unreadable) if recursive else [_listing(root, unreadable)]
    for folder, subfolders, names in walk:
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            kind = _special(path)
            if kind is None:
                yield path
            else:
                rejected.append(Rejection(path, f"{kind}, not a file; skipped"))


def _listing(root: Path, unreadable: Callable[[OSError], None]) -> tuple[str, list[str], list[str]]:
    try:
        names = os.listdir(root)
    except OSError as error:
        unreadable(error)
        return str(root), [], []
    return str(root), [], [n for n in names if not (root / n).is_dir()]


def _special(path: Path) -> str | None:
    """What a directory entry is when it is no regular file (or a link to one)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a link that leads nowhere" if path.is_symlink() else "gone during the scan"
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


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
    segmentations: list[SegmentationFile] = []
    rejections: list[Rejection] = []
    count = 0
    for path in iter_files(root, recursive, rejections):
        count += 1
        result = read_header(path, pseudonymizer, modalities)
        if isinstance(result, Rejection):
            rejections.append(result)
        elif isinstance(result, SegmentationFile):
            segmentations.append(result)
        else:
            headers.append(result)
        if on_file is not None:
            on_file(path)
    volumes, unplaced = assemble(headers)
    return FolderScan(volumes, rejections + unplaced, count, segmentations)
