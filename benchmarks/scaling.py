"""Time and peak memory of scan, train and adapt at 1x, 2x and 4x the patients.

Two simulated hospitals (16 slices a patient; 8 in quick mode) written as DICOM with
labels.csv at each size (Siemens B30f at 12 mGy, and GE's sharp LUNG kernel at 1.5 mGy),
read through the dicom-ct source as a real export would be. Each job is the command a user
runs, in its own process, from an empty cache; its wall time and the peak resident memory
of its own address space (VmHWM) are measured (``suite.measured``):

- scan: ``medadapt inspect FOLDER --json`` (every file's header, series assembly);
- train: ``medadapt train`` at the first site (decoding, resampling and caching every
  patch on the first epoch, then a fixed number of epochs, no early stopping);
- adapt: ``medadapt adapt --method coral --source-profile`` to the second site (labelled
  source batches and unlabelled target batches every step, same fixed epochs).

Targets: time grows at most linearly with the patients (4x the patients in at most 4x the
time); peak memory grows by less than 20% from 1x to 4x.

    .venv/bin/python benchmarks/scaling.py [--quick]     (or: make bench)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

import suite
from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital
from sites import site_profile
from suite import Section, measured, verdict

FACTORS = (1, 2, 4)
JOBS = ("scan", "train", "adapt")
SCANNERS = {"first": "siemens-smooth-standard-dose", "second": "ge-sharp-low-dose"}


def _profile(work: Path, site: str, hospital: Path, epochs: int) -> Path:
    """The site's profile over its DICOM export: fixed epochs, no early stopping."""
    path = site_profile(work, f"{site} site", patients=1, epochs=epochs, patience=None)
    document = yaml.safe_load(path.read_text())
    document["data"] = {
        "source": "dicom-ct",
        "params": {"root": str(hospital / "dicom")},
        "label_file": str(hospital / "labels.csv"),
        "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def run(quick: bool, work: Path) -> Section:
    """Each job at each size, in its own process, from an empty cache."""
    # Large enough that the work per patient, not the start-up of a process (about 5 s of
    # imports), decides how the time grows.
    base, epochs = (6, 1) if quick else (60, 4)
    slices = 8 if quick else 16
    medadapt = ["-m", "medadapt.engine", "--quiet"]
    rows: list[dict[str, Any]] = []
    for factor in FACTORS:
        patients = base * factor
        hospitals = {}
        for site, scanner in SCANNERS.items():
            spec = HospitalSpec(scanner=scanner, patients=patients, slices=slices, seed=31)
            hospitals[site] = work / f"{site}-{factor}x"
            write_hospital(spec, hospitals[site], workers=os.cpu_count() or 1)
        first = _profile(work / f"{factor}x", "first", hospitals["first"], epochs)
        second = _profile(work / f"{factor}x", "second", hospitals["second"], epochs)
        runs = work / f"runs-{factor}x"
        env = {**os.environ, "MEDADAPT_CACHE_DIR": str(work / f"cache-{factor}x")}
        commands = {
            "scan": [*medadapt, "inspect", str(hospitals["first"] / "dicom"), "--json"],
            "train": [*medadapt, "train", "-p", str(first), "--out", str(runs / "train")],
            "adapt": [
                *medadapt,
                "adapt",
                "-p",
                str(second),
                "--from",
                str(runs / "train" / "model"),
                "--method",
                "coral",
                "--source-profile",
                str(first),
                "--out",
                str(runs / "adapt"),
            ],
        }
        files = sum(1 for _ in (hospitals["first"] / "dicom").rglob("*.dcm"))
        for job, command in commands.items():
            seconds, peak, _ = measured(command, env)
            rows.append(
                {
                    "job": job,
                    "factor": factor,
                    "patients": patients,
                    "files": files,
                    "seconds": round(seconds, 2),
                    "peak_mib": round(peak, 1),
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"Two simulated hospitals of {base}, {2 * base} and {4 * base} patients ({slices} "
        "slices of 256 x 256 each, DICOM with labels.csv), read through the dicom-ct source. "
        "Each job is the `medadapt` command, run in its own process from an empty cache: scan = "
        "`medadapt inspect FOLDER` (first site); train = `medadapt train` at the first site "
        f"({epochs} epochs, no early stopping; the first epoch decodes and caches every "
        "patch); adapt = `medadapt adapt --method coral --source-profile` to the second site "
        f"({epochs} epochs). Peak memory: the process's peak resident memory (VmHWM). "
        "Ratios against the same job at 1x.",
        "",
        "| job | patients | DICOM files | seconds | vs 1x | peak memory (MiB) | vs 1x |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    findings = []
    for job in JOBS:
        mine = [row for row in rows if row["job"] == job]
        one = mine[0]
        for row in mine:
            lines.append(
                f"| {job} | {row['patients']} | {row['files']:,} | {row['seconds']:.1f} "
                f"| {row['seconds'] / one['seconds']:.2f}x | {row['peak_mib']:.0f} "
                f"| {row['peak_mib'] / one['peak_mib']:.2f}x |"
            )
        two, four = mine[1], mine[-1]
        time_ratio = four["seconds"] / one["seconds"]
        memory_ratio = four["peak_mib"] / one["peak_mib"]
        # Seconds per added patient, from 1x to 2x and from 2x to 4x: a rate that grows
        # would mean more than linear time, which the start-up can hide in the ratio.
        first = (two["seconds"] - one["seconds"]) / (two["patients"] - one["patients"])
        second = (four["seconds"] - two["seconds"]) / (four["patients"] - two["patients"])
        findings.append(
            f"- {job}: 4x the patients in {time_ratio:.2f}x the time (target at most 4x): "
            f"{verdict(time_ratio <= 4.0)}; each added patient costs {first:.3f} s from 1x "
            f"to 2x and {second:.3f} s from 2x to 4x; peak memory {memory_ratio:.2f}x "
            f"(target under 1.20x): {verdict(memory_ratio < 1.2)}"
        )
    lines += ["", *findings]
    return Section(
        heading="Scaling: scan, train and adapt at 1x, 2x and 4x the patients",
        lines=lines,
        tables={"scaling": rows},
        command=".venv/bin/python benchmarks/scaling.py",
    )


if __name__ == "__main__":
    suite.main(["--only", "scaling", *sys.argv[1:]])
