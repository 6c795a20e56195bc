"""Scanning a large DICOM folder: files per second and memory, from 1,000 to 5,000 files.

Writes 5,000 CT files (50 series of 100 slices, 128 x 128) and scans the first 1,000, then
all 5,000, measuring the peak memory Python allocates during each scan (tracemalloc). A
scan keeps a small header per file and never the pixels, so memory grows with the number
of files by far less than their pixel data.

    .venv/bin/python benchmarks/dicom_scan.py [--quick]   (or: make bench)
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

import suite
from medadapt.engine import Pseudonymizer
from medadapt.plugins.dicom_ct.scan import scan_folder
from medadapt.plugins.dicom_ct.writer import ct_slice
from suite import Section

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


def run(quick: bool, work: Path) -> Section:
    """Scan a folder of a fifth of the files, then of all of them."""
    series, slices = (5, 40) if quick else (50, 100)
    pseudonymizer = Pseudonymizer("benchmark-secret-0123456789")
    rows = []
    write_folder(work / "small", series // 5, slices)
    write_folder(work / "large", series, slices)
    for name in ("small", "large"):
        files, seconds, peak = measure(work / name, pseudonymizer)
        rows.append(
            {
                "files": files,
                "seconds": round(seconds, 4),
                "files_per_second": round(files / seconds, 1),
                "peak_mib": round(peak, 3),
            }
        )
    pixel_mib = SIZE * SIZE * 2 / 2**20
    small, large = rows
    per_file_kib = (large["peak_mib"] - small["peak_mib"]) / (large["files"] - small["files"])
    lines = [
        f"Folders of CT files ({SIZE} x {SIZE}, {slices} slices per series), scanned from disk "
        "(page cache warm after writing); seconds from one scan, peak memory from tracemalloc "
        "in a second scan of the same folder.",
        "",
        "| files | seconds | files per second | peak memory (MiB) | pixel data on disk (MiB) |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['files']:,} | {r['seconds']:.2f} | {r['files_per_second']:,.0f} | "
            f"{r['peak_mib']:.1f} | {r['files'] * pixel_mib:,.0f} |"
            for r in rows
        ],
        "",
        f"- memory grows by {per_file_kib * 1024:.1f} KiB per file scanned (its header "
        f"record), against {pixel_mib * 1024:.0f} KiB of pixel data per file, which is never "
        "read.",
    ]
    return Section(
        heading="DICOM folder scan",
        lines=lines,
        tables={"dicom_scan": rows},
        command=".venv/bin/python benchmarks/dicom_scan.py",
        versions=[f"pydicom {pydicom.__version__}"],
    )


if __name__ == "__main__":
    suite.main(["--only", "dicom_scan", *sys.argv[1:]])
