"""Scanning a large DICOM folder: files per second and memory, from 1,000 to 5,000 files.

Writes 5,000 CT files (50 series of 100 slices, 128 x 128) and scans the first 1,000, then
all 5,000, measuring the peak memory Python allocates during each scan (tracemalloc). A
scan keeps a small header per file and never the pixels, so memory grows with the number
of files by far less than their pixel data. Results go to RESULTS.md.

    .venv/bin/python benchmarks/dicom_scan.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from medadapt.engine.pseudonym import Pseudonymizer
from medadapt.plugins.dicom_ct.scan import scan_folder
from medadapt.plugins.dicom_ct.writer import ct_slice
from results import machine, publish

SECTION = "## DICOM folder scan"
SIZE = 128


def write_folder(root: Path, series: int, slices: int) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 3000, (SIZE, SIZE), dtype=np.int16)
    for s in range(series):
        folder = root / f"series-{s:03d}"
        folder.mkdir(parents=True)
        series_uid, study_uid = generate_uid(), generate_uid()
        for k in range(slices):
            ds = ct_slice(
                pixels,
                patient_id=f"SYNTHETIC-{s}",
                study_uid=study_uid,
                series_uid=series_uid,
                position=(0.0, 0.0, 2.0 * k),
                slice_thickness=2.0,
                instance=k + 1,
            )
            ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def measure(root: Path, pseudonymizer: Pseudonymizer) -> tuple[int, float, float]:
    """Files scanned, seconds (untraced) and peak MiB (traced, in a second scan)."""
    start = time.perf_counter()
    found = scan_folder(root, pseudonymizer)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    scan_folder(root, pseudonymizer)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return found.files, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args()
    pseudonymizer = Pseudonymizer("benchmark-secret-0123456789")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_folder(root / "small", 10, 100)
        write_folder(root / "large", 50, 100)
        for name in ("small", "large"):
            files, seconds, peak = measure(root / name, pseudonymizer)
            rows.append((files, seconds, peak))
    pixel_mib = SIZE * SIZE * 2 / 2**20
    lines = [
        SECTION,
        "",
        f"Folders of CT files ({SIZE} x {SIZE}, 100 slices per series), scanned from disk "
        "(page cache warm after writing); seconds from one scan, peak memory from tracemalloc "
        "in a second scan of the same folder.",
        "",
        "| files | seconds | files per second | peak memory (MiB) | pixel data on disk (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for files, seconds, peak in rows:
        lines.append(
            f"| {files:,} | {seconds:.2f} | {files / seconds:,.0f} | {peak:.1f} | "
            f"{files * pixel_mib:,.0f} |"
        )
    (small_files, _, small_peak), (large_files, _, large_peak) = rows
    per_file_kib = (large_peak - small_peak) / (large_files - small_files) * 1024
    lines += [
        "",
        f"- memory grows by {per_file_kib:.1f} KiB per file scanned (its header record), "
        f"against {pixel_mib * 1024:.0f} KiB of pixel data per file, which is never read.",
        "",
        machine(f"pydicom {pydicom.__version__}"),
        "Command: `.venv/bin/python benchmarks/dicom_scan.py` (or `make bench`).",
        "",
    ]
    publish(lines, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
