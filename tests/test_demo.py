"""The demo and the shipped profiles: what a newcomer runs first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.validation.report import interval_text
from medadapt.plugins.phantom.demo import SITES, shipped_profiles

PROFILES = sorted(shipped_profiles().glob("*.yaml"))


def test_the_demo_profiles_are_shipped_with_the_package():
    names = {path.name for path in PROFILES}
    assert {site["profile"] for site in SITES.values()} <= names
    assert "template.yaml" in names


@pytest.mark.parametrize("path", PROFILES, ids=lambda path: path.name)
def test_every_shipped_profile_passes_the_profile_check(path):
    # In this process: a new one per profile cost seconds of imports each (tests/test_cli.py
    # runs the installed command in its own process).
    checked = CliRunner().invoke(cli, ["profile", "check", str(path)])
    assert checked.exit_code == 0, checked.output
    assert "valid" in checked.stdout


def test_the_demo_refuses_a_folder_that_holds_something_else(tmp_path):
    # In this process, so the fast tier's guard would fail the test if the demo trained anyway.
    (tmp_path / "notes.txt").write_text("mine")
    get_plugin_host().add_commands(cli)  # the demo is the phantom plugin's command
    done = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(tmp_path)])
    assert done.exit_code == 2
    assert "is not empty and holds no demo" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_demo_folder_of_an_older_medadapt_is_started_afresh_and_another_size_refused(
    tmp_path,
):
    from medadapt.plugins.phantom.demo import _claim

    (tmp_path / "medadapt-demo.json").write_text(json.dumps({"demo": 1, "fast": True}))
    (tmp_path / "runs" / "hospital-a-train").mkdir(parents=True)  # no provenance records
    assert _claim(tmp_path, fast=True) is True
    assert [p.name for p in tmp_path.iterdir()] == ["medadapt-demo.json"]
    assert _claim(tmp_path, fast=True) is False  # now the same demo
    with pytest.raises(InvalidInputError, match="holds a demo of another size"):
        _claim(tmp_path, fast=False)


def demo_environment(home) -> dict[str, str]:
    """The user's environment without medadapt's variables or caches, and a fresh home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MEDADAPT_", "XDG_", "MPLCONFIGDIR", "TORCH_HOME"))
    }
    env["HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``medadapt demo`` as ``make demo`` runs it, in an empty folder, then again."""
    root = tmp_path_factory.mktemp("demo")
    home, work = root / "home", root / "work"
    home.mkdir()
    work.mkdir()

    def run_demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "medadapt.engine", "demo", "--out", "demo"],
            cwd=work,
            env=demo_environment(home),
            capture_output=True,
            text=True,
            timeout=900,
        )

    first = run_demo()
    return {"first": first, "again": run_demo(), "out": work / "demo", "work": work, "home": home}


@pytest.mark.slow
def test_the_demo_passes_and_prints_what_its_reports_say_and_writes_only_its_folder(demo):
    done, out = demo["first"], demo["out"]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    # Nothing outside the output folder: not in the working folder, not in the home folder.
    assert [p.name for p in demo["work"].iterdir()] == ["demo"]
    assert list(demo["home"].iterdir()) == []
    runs = out / "runs"
    home_report = json.loads((runs / "hospital-a-validate" / "report.json").read_text())
    report = json.loads((runs / "hospital-b-validate" / "report.json").read_text())
    printed = done.stdout
    assert interval_text(home_report["results"]["model"]["auroc"]) in printed
    assert interval_text(report["results"]["baseline"]["auroc"]) in printed
    assert interval_text(report["results"]["model"]["auroc"]) in printed
    assert interval_text(report["comparison"]["auroc_difference"]) in printed
    assert report["acceptance"]["verdict"] == "pass"
    assert "verdict: PASS" in printed
    assert "report: demo/runs/hospital-b-validate/report.html" in printed
    assert (runs / "hospital-b-validate" / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hospital_b_after_auroc"] == report["results"]["model"]["auroc"]
    assert summary["verdict"] == "pass"
    assert f"  decision: {summary['decision']}" in printed
    # The report says what the choice rested on.
    assert summary["decision"] in report["what_changed"]
    # Run again in the same folder: what is finished is reused, and the figures are the same.
    again = demo["again"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the source model trained at Hospital A" in again.stderr
    assert again.stdout == done.stdout
    # The demo's profiles are the shipped ones, pointed at its sites.
    for site in SITES.values():
        assert (out / "profiles" / site["profile"]).is_file()


@pytest.mark.slow
def test_the_demo_keeps_a_model_that_beats_the_unadapted_one_on_bs_validation_patients(
    demo, monkeypatch
):
    """Recomputed from the runs' saved validation predictions and B's validation labels:
    the kept model's AUROC gain over the unadapted model is the one adapt reported, its
    bootstrap lower bound clears the rule's margin, and leaving out any one validation
    patient still keeps an adapted model whose gain clears it. (Which of two adapted models
    that both clear it is kept can hang on one patient: in one run, tent or mmd.)"""
    from sklearn.metrics import roc_auc_score

    from medadapt.engine import Candidate, Evidence
    from medadapt.engine.adaptation import UNADAPTED, target_split
    from medadapt.engine.contracts.host import get_plugin_host
    from medadapt.engine.data.samples import open_site_data
    from medadapt.engine.profile import load_profile
    from medadapt.plugins.decision_rules import ValidationBootstrap
    from medadapt.plugins.phantom.demo import DEMO_KEY

    out = demo["out"]
    monkeypatch.setenv("MEDADAPT_PSEUDONYM_KEY", DEMO_KEY)
    registry = get_plugin_host().registry()
    b = load_profile(out / "profiles" / "hospital_b_chest.yaml", registry)
    split = target_split(open_site_data(b, registry, out / "cache").records, b)
    labels = np.array([int(r.label == b.task.positive_class) for r in split.validation])
    patients = [r.patient_key for r in split.validation]
    adapted = json.loads((out / "runs" / "hospital-b-adapt" / "adapt.json").read_text())
    decision = adapted["decision"]
    assert decision["rule"] == "validation-bootstrap"
    assert decision["evidence"] == "labels"
    assert adapted["kept"] != UNADAPTED
    runs = {
        name: np.load(Path(figures["runs"][0]["folder"]) / "validation-probabilities.npy")
        for name, figures in adapted["methods"].items()
    }
    kept, unadapted = runs[adapted["kept"]][:, 1], runs[UNADAPTED][:, 1]
    gain = roc_auc_score(labels, kept) - roc_auc_score(labels, unadapted)
    assert decision["margin"]["value"] == pytest.approx(gain)
    assert decision["margin"]["patients"] == len(set(patients)) >= 30
    rule = ValidationBootstrap()
    assert decision["margin"]["low"] > rule.params.margin
    for left_out in sorted(set(patients)):
        keep = np.array([p != left_out for p in patients])
        evidence = Evidence(
            tuple(Candidate(name, b.seed, p[keep]) for name, p in runs.items()),
            tuple(p for p in patients if p != left_out),
            labels[keep],
            1,
            seed=b.seed,
        )
        without = rule.decide(evidence)
        assert not without.kept.unadapted, left_out
        assert without.margin["low"] > rule.params.margin, left_out


@pytest.mark.slow
def test_nothing_the_demo_writes_holds_a_patient_id(demo):
    """The simulated hospitals' DICOM files and label files hold their PatientIDs, as a
    hospital's export does; nothing medadapt wrote from them may, and no folder is named by
    one (the phantom names its folders by case number)."""
    out = demo["out"]
    inputs = [site / "dicom" for site in (out / "sites").iterdir()]
    inputs += [label for site in (out / "sites").iterdir() for label in site.glob("*labels.csv")]
    written = [
        path
        for path in out.rglob("*")
        if path.is_file() and not any(path == i or i in path.parents for i in inputs)
    ]
    assert len(written) > 50  # models, reports, caches, logs ...
    leaks = [str(path.relative_to(out)) for path in written if b"PHANTOM-" in path.read_bytes()]
    assert leaks == []
    assert not [p for p in out.rglob("*PHANTOM-*")]
