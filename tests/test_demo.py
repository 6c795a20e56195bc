"""The demo and the shipped profiles: what a newcomer runs first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medadapt.engine.demo import SITES, shipped_profiles
from medadapt.engine.report import interval_text

PROFILES = sorted(shipped_profiles().glob("*.yaml"))


def test_the_demo_profiles_are_shipped_with_the_package():
    names = {path.name for path in PROFILES}
    assert {site["profile"] for site in SITES.values()} <= names
    assert "template.yaml" in names


@pytest.mark.parametrize("path", PROFILES, ids=lambda path: path.name)
def test_every_shipped_profile_passes_the_profile_check(path, run_medadapt):
    checked = run_medadapt("profile", "check", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid" in checked.stdout


def test_the_demo_refuses_a_folder_that_holds_something_else(tmp_path, run_medadapt):
    (tmp_path / "notes.txt").write_text("mine")
    done = run_medadapt("demo", "--fast", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "is not empty and holds no demo" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_the_fast_demo_prints_what_its_reports_say_and_writes_only_its_folder(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MEDADAPT_", "XDG_", "MPLCONFIGDIR", "TORCH_HOME"))
    }
    env["HOME"] = str(home)

    def run_demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "medadapt.engine", "demo", "--fast", "--out", "demo"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = run_demo()
    assert done.returncode in (0, 1, 5), done.stdout + done.stderr[-3000:]
    out = work / "demo"
    # Nothing outside the output folder: not in the working folder, not in the home folder.
    assert [p.name for p in work.iterdir()] == ["demo"]
    assert list(home.iterdir()) == []
    runs = out / "runs"
    home_report = json.loads((runs / "hospital-a-validate" / "report.json").read_text())
    report = json.loads((runs / "hospital-b-validate" / "report.json").read_text())
    printed = done.stdout
    assert interval_text(home_report["results"]["model"]["auroc"]) in printed
    assert interval_text(report["results"]["baseline"]["auroc"]) in printed
    assert interval_text(report["results"]["model"]["auroc"]) in printed
    assert interval_text(report["comparison"]["auroc_difference"]) in printed
    assert f"verdict: {report['acceptance']['verdict'].upper()}" in printed
    assert "report: demo/runs/hospital-b-validate/report.html" in printed
    assert (runs / "hospital-b-validate" / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hospital_b_after_auroc"] == report["results"]["model"]["auroc"]
    assert summary["verdict"] == report["acceptance"]["verdict"]
    expected = {"pass": 0, "fail": 1, "no verdict": 5}[summary["verdict"]]
    assert done.returncode == expected
    # Run again in the same folder: what is finished is reused, and the figures are the same.
    again = run_demo()
    assert again.returncode == done.returncode, again.stderr[-3000:]
    assert "reusing the source model trained at Hospital A" in again.stderr
    assert again.stdout == done.stdout
    # The demo's profiles are the shipped ones, pointed at its sites.
    for site in SITES.values():
        assert (out / "profiles" / site["profile"]).is_file()
