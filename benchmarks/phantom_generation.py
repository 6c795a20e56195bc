"""How long a simulated hospital takes to write: 100 chest patients, 24 slices of 256 x 256.

Generates the hospital with ``medadapt phantom``'s Python API in a temporary folder, with
1 and with 2 worker processes, and writes the times to RESULTS.md. Target: at most 60 s on
2 cores.

    .venv/bin/python benchmarks/phantom_generation.py     (or: make bench)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital
from results import machine, publish

SECTION = "## Simulated hospital generation"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args()
    spec = HospitalSpec(body_region="chest", patients=args.patients, slices=24, size=256, seed=1)
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            summary = write_hospital(spec, Path(work), workers=workers)
            seconds = time.perf_counter() - start
            files = sum(1 for _ in (Path(work) / "dicom").rglob("*.dcm"))
        rows.append((workers, seconds, files, sum(summary.lesions.values())))
    lines = [
        SECTION,
        "",
        f"{args.patients} simulated chest patients, one series each of 24 slices of 256 x 256 "
        f"(preset {spec.scanner}), written as DICOM with labels.csv.",
        "",
        "| worker processes | seconds | patients per second | files | lesions |",
        "|---:|---:|---:|---:|---:|",
    ]
    for workers, seconds, files, lesions in rows:
        lines.append(
            f"| {workers} | {seconds:.1f} | {args.patients / seconds:.2f} | {files:,} | {lesions} |"
        )
    best = min(seconds for _, seconds, _, _ in rows)
    lines += [
        "",
        f"- fastest: {best:.1f} s (target at most 60 s on 2 cores)",
        "",
        machine(),
        f"Command: `.venv/bin/python benchmarks/phantom_generation.py --patients {args.patients}` "
        "(or `make bench`).",
        "",
    ]
    publish(lines, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
