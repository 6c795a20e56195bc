"""How long a simulated hospital takes to write: 100 chest patients, 24 slices of 256 x 256.

Generates the hospital with ``medadapt phantom``'s Python API, with 1 and with 2 worker
processes. Target: at most 60 s on 2 cores.

    .venv/bin/python benchmarks/phantom_generation.py [--quick]     (or: make bench)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import suite
from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital
from suite import Section, verdict


def run(quick: bool, work: Path) -> Section:
    """Write the same hospital with 1 and with 2 worker processes."""
    patients = 10 if quick else 100
    spec = HospitalSpec(body_region="chest", patients=patients, slices=24, size=256, seed=1)
    rows = []
    for workers in (1, 2):
        folder = work / f"workers-{workers}"
        start = time.perf_counter()
        summary = write_hospital(spec, folder, workers=workers)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "workers": workers,
                "patients": patients,
                "seconds": round(seconds, 2),
                "files": sum(1 for _ in (folder / "dicom").rglob("*.dcm")),
                "lesions": sum(summary.lesions.values()),
            }
        )
    best = min(row["seconds"] for row in rows)
    lines = [
        f"{patients} simulated chest patients, one series each of 24 slices of 256 x 256 "
        f"(preset {spec.scanner}), written as DICOM with labels.csv.",
        "",
        "| worker processes | seconds | patients per second | files | lesions |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['workers']} | {r['seconds']:.1f} | {patients / r['seconds']:.2f} | "
            f"{r['files']:,} | {r['lesions']} |"
            for r in rows
        ],
        "",
        f"- fastest: {best:.1f} s (target at most 60 s for 100 patients on 2 cores): "
        f"{verdict(best <= 60 * patients / 100)}",
    ]
    return Section(
        heading="Simulated hospital generation",
        lines=lines,
        tables={"phantom_generation": rows},
        command=".venv/bin/python benchmarks/phantom_generation.py",
    )


if __name__ == "__main__":
    suite.main(["--only", "phantom_generation", *sys.argv[1:]])
