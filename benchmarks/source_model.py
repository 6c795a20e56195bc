"""A source model at its home hospital: `medadapt train` on the default 2D phantom profile.

Runs the train job on hospital_profiles/phantom-hospital-a.yaml with an empty cache (so the
time includes simulating the patients), and records the best validation AUROC and the wall
time. Target: validation AUROC above 0.9 within a few minutes on 2 cores.

    .venv/bin/python benchmarks/source_model.py [--quick]     (or: make bench)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

import suite
from suite import Section, verdict

PROFILE = suite.ROOT / "hospital_profiles" / "phantom-hospital-a.yaml"


def run(quick: bool, work: Path) -> Section:
    """Train the profile's model once, from an empty cache."""
    profile = PROFILE
    if quick:
        document = yaml.safe_load(PROFILE.read_text())
        document["data"]["params"]["patients"] = 30
        document["training"]["epochs"] = 2
        profile = work / PROFILE.name
        profile.write_text(yaml.safe_dump(document))
    env = {**os.environ, "MEDADAPT_CACHE_DIR": str(work / "cache")}
    out = work / "run"
    command = [sys.executable, "-m", "medadapt.engine", "--quiet", "train", "-p", str(profile)]
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(out)], check=True, env=env)
    seconds = time.perf_counter() - start
    result = json.loads((out / "run.json").read_text())
    best = result["best"]
    row = {
        "best_val_auroc": best["val_auroc"],
        "best_epoch": result["best_epoch"],
        "epochs": len(result["history"]),
        "seconds": round(seconds, 1),
        "patients": yaml.safe_load(profile.read_text())["data"]["params"]["patients"],
    }
    lines = [
        f"`medadapt train -p hospital_profiles/{PROFILE.name}`: ResNet-18 from scratch, 2D "
        f"48 x 48 patches, {row['patients']} simulated patients, empty cache.",
        "",
        "| best validation AUROC | at epoch | epochs run | seconds |",
        "|---:|---:|---:|---:|",
        f"| {best['val_auroc']:.3f} | {row['best_epoch']} | {row['epochs']} | {seconds:.0f} |",
        "",
        f"- best validation AUROC {best['val_auroc']:.3f} (target above 0.9): "
        f"{verdict(best['val_auroc'] > 0.9)}",
        f"- wall time {seconds:.0f} s, including simulating the patients (target: a few "
        f"minutes): {verdict(seconds < 300)}",
        f"- samples per split: {result['samples']}",
        f"- diagnostics: {result['diagnostics'] or 'none'}",
    ]
    return Section(
        heading="Source model on a simulated hospital",
        lines=lines,
        tables={"source_model": [row]},
        command=".venv/bin/python benchmarks/source_model.py",
    )


if __name__ == "__main__":
    suite.main(["--only", "source_model", *sys.argv[1:]])
