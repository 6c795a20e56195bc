"""A source model at its home hospital: `medadapt train` on the default 2D phantom profile.

Runs the train job on hospital_profiles/phantom-hospital-a.yaml with an empty cache (so the
time includes simulating the patients), and records the best validation AUROC and the wall
time in RESULTS.md. Target: validation AUROC above 0.9 within a few minutes on 2 cores.

    .venv/bin/python benchmarks/source_model.py      (or: make bench)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import machine, publish

SECTION = "## Source model on a simulated hospital"
PROFILE = Path(__file__).resolve().parent.parent / "hospital_profiles" / "phantom-hospital-a.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "MEDADAPT_CACHE_DIR": str(Path(work) / "cache")}
        out = Path(work) / "run"
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "medadapt.engine",
                "--quiet",
                "train",
                "-p",
                str(PROFILE),
                "--out",
                str(out),
            ],
            check=True,
            env=env,
        )
        seconds = time.perf_counter() - start
        run = json.loads((out / "run.json").read_text())
    best = run["best"]
    lines = [
        SECTION,
        "",
        f"`medadapt train -p hospital_profiles/{PROFILE.name}`: ResNet-18 from scratch, 2D "
        "48 x 48 patches, 120 simulated patients (about 175 lesions), empty cache.",
        "",
        f"- best validation AUROC {best['val_auroc']:.3f} at epoch {run['best_epoch']} of "
        f"{len(run['history'])} (target above 0.9)",
        f"- wall time {seconds:.0f} s, including simulating the patients (target: a few minutes)",
        f"- samples per split: {run['samples']}",
        f"- diagnostics: {run['diagnostics'] or 'none'}",
        "",
        machine(),
        "Command: `.venv/bin/python benchmarks/source_model.py` (or `make bench`).",
        "",
    ]
    publish(lines, SECTION, write=not args.no_write)


if __name__ == "__main__":
    main()
