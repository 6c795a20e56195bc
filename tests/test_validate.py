"""`medadapt validate`: every number of the report recomputed from its saved predictions."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from sklearn.metrics import confusion_matrix, roc_auc_score

from medadapt.engine.adaptation import adapt
from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import ExitCode
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.profile import load_profile
from medadapt.engine.shift import SHIFT_JSON, analyse_shift
from medadapt.engine.training.job import train
from medadapt.engine.validation.job import PREDICTIONS, validate
from medadapt.engine.validation.metrics import (
    PatientBootstrap,
    expected_calibration_error,
    rank_auroc,
)
from medadapt.engine.validation.report import REPORT_HTML, REPORT_JSON

TEMPLATE = Path(__file__).resolve().parent.parent / "hospital_profiles" / "template.yaml"


def site(phantom_site, name: str, seed: int, **params) -> dict:
    """A harder task than the default (difficulty 0.9), so the models make mistakes."""
    profile = phantom_site(name, seed, patients=30, split=(0.4, 0.3, 0.3), difficulty=0.9, **params)
    profile["seed"] = 4
    profile["augmentations"] = [{"name": "random-flip", "params": {"axis": "left-right"}}]
    profile["acceptance"] = {
        "min_auroc": 0.6,
        "min_sensitivity": 0.5,
        "max_calibration_error": 0.5,
        "non_inferiority_margin": 0.5,
        "min_test_patients": 5,
    }
    profile["report"] = {"recalibrate": True, "subgroups": ["manufacturer", "convolution_kernel"]}
    return profile


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def validated(tmp_path_factory, phantom_site):
    """A source model, its AdaBN adaptation to a sharp-kernel site, and the report."""
    folder = tmp_path_factory.mktemp("validate")
    host = get_plugin_host()
    registry = host.registry()
    source = load_profile(write(folder, "a.yaml", site(phantom_site, "Hospital A", 5)), registry)
    target = site(phantom_site, "Hospital B", 6, scanner="ge-sharp-low-dose", dose_mgy=0.3)
    target_path = write(folder, "b.yaml", target)
    target = load_profile(target_path, registry)
    trained = train(source, registry, host, folder / "train", quiet=True)
    adapted = adapt(target, registry, host, trained.model_dir, folder / "adapt", quiet=True)
    shift = analyse_shift(target, source, registry, trained.model_dir, folder / "shift")
    result = validate(
        target, registry, host, adapted.model_dir, folder / "report", trained.model_dir, shift
    )
    return {
        "folder": folder,
        "source": folder / "a.yaml",
        "shift": shift,
        "target": target_path,
        "model": adapted.model_dir,
        "baseline": trained.model_dir,
        "result": result,
    }


def _predictions(folder: Path) -> dict:
    table: dict = defaultdict(lambda: {"labels": [], "scores": [], "patients": [], "rows": []})
    with (folder / PREDICTIONS).open() as handle:
        for row in csv.DictReader(handle):
            entry = table[(row["model"], row["split"])]
            entry["labels"].append(int(row["label"]))
            entry["scores"].append(float(row["score"]))
            entry["patients"].append(row["patient"])
            entry["rows"].append(row)
    return {
        key: {**v, "labels": np.array(v["labels"]), "scores": np.array(v["scores"])}
        for key, v in table.items()
    }


def _auroc(labels: np.ndarray, scores: np.ndarray):
    def statistic(i: np.ndarray) -> float | None:
        y = labels[i]
        return rank_auroc(y, scores[i])  # equal to scikit-learn's (test_metrics)

    return statistic


def _close(estimate: dict, value: float, boot: PatientBootstrap, statistic) -> None:
    assert estimate["value"] == pytest.approx(value)
    again = boot.estimate(statistic)
    assert (estimate["low"], estimate["high"]) == pytest.approx((again.low, again.high))


@pytest.mark.slow
def test_every_number_matches_a_recomputation_from_the_saved_predictions(validated):
    folder = validated["folder"] / "report"
    report = json.loads((folder / REPORT_JSON).read_text())
    assert report == json.loads(json.dumps(validated["result"].report))
    saved = _predictions(folder)
    for name in ("model", "baseline"):
        val, test = saved[(name, "validation")], saved[(name, "test")]
        measured = report["results"][name]
        labels, scores = test["labels"], test["scores"]
        boot = PatientBootstrap(test["patients"], seed=report["bootstrap"]["seed"])
        # AUROC (scikit-learn) with its patient bootstrap interval.
        _close(measured["auroc"], roc_auc_score(labels, scores), boot, _auroc(labels, scores))
        # Operating point: the most specific validation threshold reaching sensitivity 0.9.
        positives = val["scores"][val["labels"] == 1]
        threshold = max(t for t in np.unique(val["scores"]) if np.mean(positives >= t) >= 0.9)
        assert measured["threshold"] == pytest.approx(threshold)
        tn, fp, fn, tp = confusion_matrix(labels, scores >= threshold, labels=[0, 1]).ravel()
        assert measured["confusion"] == {
            "true_positive": tp,
            "false_positive": fp,
            "false_negative": fn,
            "true_negative": tn,
        }
        assert measured["sensitivity"]["value"] == pytest.approx(tp / (tp + fn))
        assert measured["specificity"]["value"] == pytest.approx(tn / (tn + fp))
        if tp + fp:
            assert measured["ppv"]["value"] == pytest.approx(tp / (tp + fp))
        if tn + fn:
            assert measured["npv"]["value"] == pytest.approx(tn / (tn + fn))
        # Calibration: ten equal bins, by hand.
        bins = np.minimum((scores * 10).astype(int), 9)
        ece = sum(
            (bins == b).sum() * abs(scores[bins == b].mean() - labels[bins == b].mean())
            for b in range(10)
            if (bins == b).any()
        ) / len(scores)
        assert measured["calibration_error"]["value"] == pytest.approx(ece)
        assert expected_calibration_error(labels, scores) == pytest.approx(ece)
        assert sum(row["n"] for row in measured["reliability"]) == len(scores)
    # The paired difference uses the same resamples for both models.
    model, baseline = saved[("model", "test")], saved[("baseline", "test")]
    assert model["patients"] == baseline["patients"]
    difference = roc_auc_score(model["labels"], model["scores"]) - roc_auc_score(
        baseline["labels"], baseline["scores"]
    )
    assert report["comparison"]["auroc_difference"]["value"] == pytest.approx(difference)
    for name in ("sensitivity", "specificity"):
        change = (
            report["results"]["model"][name]["value"] - report["results"]["baseline"][name]["value"]
        )
        assert report["comparison"][f"{name}_difference"]["value"] == pytest.approx(change)
    # Subgroups: counts and AUROC per value of each attribute.
    for group in report["subgroups"]:
        inside = [r[group["attribute"]] == group["value"] for r in model["rows"]]
        y, s = model["labels"][inside], model["scores"][inside]
        assert group["samples"] == len(y)
        assert group["patients"] == len(
            {p for p, k in zip(model["patients"], inside, strict=True) if k}
        )
        expected = roc_auc_score(y, s) if 0 < y.sum() < len(y) else None
        assert group["auroc"]["value"] == pytest.approx(expected)
    # The models: where each was trained, and where the adapted one was adapted to.
    assert report["models"]["model"]["trained_at"] == "Hospital A"
    assert report["models"]["model"]["adapted_to"] == "Hospital B"
    assert report["models"]["baseline"]["trained_at"] == "Hospital A"
    # Curves: the adaptation's epochs and the source training's, from the model cards.
    adapted = json.loads((validated["model"] / "card.json").read_text())
    source = json.loads((validated["baseline"] / "card.json").read_text())
    assert report["training"]["adaptation"] == adapted["history"]
    assert report["training"]["source training"] == source["history"]
    assert len(source["history"]) == 3  # epochs
    # Data: counts per split and class, patients disjoint.
    assert report["data"]["patients_disjoint"] is True
    assert report["data"]["validated_samples"]["test"] == len(model["labels"])
    assert sum(report["data"]["samples"]["test"].values()) == len(model["labels"])


@pytest.mark.slow
def test_the_verdict_follows_the_criteria(validated):
    report = validated["result"].report
    criteria = {c["name"]: c for c in report["acceptance"]["criteria"]}
    assert set(criteria) == {
        "min_auroc",
        "min_sensitivity",
        "max_calibration_error",
        "non_inferiority_margin",
    }
    measured = report["results"]["model"]
    # Judged on the lower bound (the default): the estimate is kept beside it.
    assert criteria["min_auroc"]["measured"] == measured["auroc"]["low"]
    assert criteria["min_auroc"]["estimate"] == measured["auroc"]["value"]
    assert criteria["min_auroc"]["margin"] == pytest.approx(measured["auroc"]["low"] - 0.6)
    assert criteria["max_calibration_error"]["measured"] == measured["calibration_error"]["high"]
    low = report["comparison"]["auroc_difference"]["low"]
    assert criteria["non_inferiority_margin"]["measured"] == low
    expected = "pass" if all(c["margin"] >= 0 for c in criteria.values()) else "fail"
    assert report["acceptance"]["verdict"] == expected


@pytest.mark.slow
def test_the_html_report_shows_the_json_numbers(validated):
    html = (validated["folder"] / "report" / REPORT_HTML).read_text()
    report = validated["result"].report
    auroc = report["results"]["model"]["auroc"]
    assert f"{auroc['value']:.3f} ({auroc['low']:.3f} to {auroc['high']:.3f})" in html
    for heading in (
        "Summary",
        "Discrimination",
        "Operating point",
        "Calibration",
        "Before and after",
        "Subgroups",
        "Most confident errors",
        "Data",
        "Limitations",
        "Provenance",
        "Training",
        "Augmentations used",
    ):
        assert f"<h2>{heading}</h2>" in html
    # Self-contained: ROC, calibration, shift, augmentations, training, errors embedded.
    assert report["failures"]["examples"]
    assert html.count("data:image/png;base64,") == 6
    for encoded in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert "<h2>How this site's data differs</h2>" in html
    assert f"<strong>{report['shift']['verdict'].upper()} shift.</strong>" in html
    assert 'src="http' not in html


def _validate_with(validated, out: Path, acceptance: dict):
    """Run the validate command on the target with other acceptance criteria."""
    profile = yaml.safe_load(validated["target"].read_text())
    profile["acceptance"] = acceptance
    path = write(out.parent, f"{out.name}.yaml", profile)
    arguments = ["validate", "-p", str(path), "--model", str(validated["model"])]
    return CliRunner().invoke(cli, [*arguments, "--out", str(out)])


@pytest.mark.slow
def test_a_failing_criterion_exits_1_and_says_by_how_much(validated, tmp_path):
    result = _validate_with(
        validated, tmp_path / "strict", {"min_auroc": 0.999, "min_test_patients": 5}
    )
    assert result.exit_code == ExitCode.NOT_PASSED, result.output
    auroc = json.loads((tmp_path / "strict" / REPORT_JSON).read_text())["results"]["model"]
    value, low, high = (auroc["auroc"][k] for k in ("value", "low", "high"))
    assert (
        f"FAIL         AUROC at least 0.999: {value:.3f} ({low:.3f} to {high:.3f}), judged on "
        f"the lower bound {low:.3f}, short by {0.999 - low:.3f}"
    ) in result.output
    assert "verdict: FAIL" in result.output


@pytest.mark.slow
def test_a_report_folder_of_another_model_is_refused_before_any_data_are_read(
    validated, tmp_path, monkeypatch
):
    report = validated["folder"] / "report"
    before = (report / REPORT_JSON).read_bytes()
    monkeypatch.setattr(
        "medadapt.engine.validation.job.open_site_data",
        lambda *a, **k: pytest.fail("the data were read before the folder was refused"),
    )
    other = ["--model", str(validated["baseline"]), "--out", str(report)]
    refused = CliRunner().invoke(cli, ["validate", "-p", str(validated["target"]), *other])
    assert refused.exit_code == ExitCode.INVALID_INPUT, refused.output
    assert "was made by `validate`" in refused.output
    assert "What differs: baseline:" in refused.output
    assert "then, none now; model:" in refused.output
    assert (report / REPORT_JSON).read_bytes() == before


@pytest.mark.slow
def test_too_few_test_patients_or_no_baseline_gives_no_verdict(validated, tmp_path):
    acceptance = {"min_auroc": 0.5, "non_inferiority_margin": 0.1, "min_test_patients": 500}
    result = _validate_with(validated, tmp_path / "few", acceptance)
    assert result.exit_code == ExitCode.NO_VERDICT, result.output
    assert "the profile asks for at least 500" in result.output
    assert "not measured: non_inferiority_margin" in result.output  # no --baseline given


@pytest.mark.slow
def test_shift_finds_the_scanner_change_and_not_a_second_draw_of_the_same_site(validated, tmp_path):
    shift = validated["shift"]
    assert shift == json.loads((validated["folder"] / "shift" / SHIFT_JSON).read_text())
    differing = {row["attribute"] for row in shift["acquisition"] if row["differs"]}
    assert {"manufacturer", "convolution_kernel", "pixel_spacing"} <= differing
    assert shift["features"]["domain_classifier_auroc"] > 0.65
    assert shift["features"]["mmd_p_value"] < 0.05
    assert shift["verdict"] in ("moderate", "large")
    assert sum(shift["hu_histograms"]["target"]) == pytest.approx(1.0, abs=0.02)
    # The same hospital, other patients: nothing differs but the patients.
    again = yaml.safe_load(validated["source"].read_text())
    again["data"]["params"]["seed"] = 11
    registry = get_plugin_host().registry()
    same = analyse_shift(
        load_profile(write(tmp_path, "again.yaml", again), registry),
        load_profile(validated["source"], registry),
        registry,
        validated["baseline"],
    )
    assert not any(row["differs"] for row in same["acquisition"])
    assert same["hu_wasserstein"] < 15
    assert same["features"]["domain_classifier_auroc"] < 0.65
    assert same["verdict"] == "none"


@pytest.mark.slow
def test_shift_reads_no_test_patient(validated, monkeypatch):
    from medadapt.engine.data.samples import PatchLoader
    from medadapt.engine.data.splits import site_split

    registry = get_plugin_host().registry()
    target = load_profile(validated["target"], registry)
    source = load_profile(validated["source"], registry)
    read = []
    original = PatchLoader.patch_hu

    def watched(self, record):
        read.append(record.patient_key)
        return original(self, record)

    monkeypatch.setattr(PatchLoader, "patch_hu", watched)
    analyse_shift(target, source, registry, validated["baseline"])
    from medadapt.engine.data.samples import open_site_data

    test_patients = set()
    for profile in (target, source):
        records = site_split(open_site_data(profile, registry).records, profile)
        test_patients |= {r.patient_key for r in records if r.split.value == "test"}
    assert read
    assert not set(read) & test_patients


@pytest.mark.slow
def test_shift_command_prints_the_verdict_and_the_rule(validated, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "shift",
            "-p",
            str(validated["target"]),
            "--against",
            str(validated["source"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verdict: MODERATE shift" in result.output or "verdict: LARGE shift" in result.output
    assert "(rule: with a model: large when" in result.output
    assert (tmp_path / SHIFT_JSON).is_file()


@pytest.mark.slow
def test_a_plugin_adds_a_section_to_the_report(validated, register, tmp_path):
    from medadapt.engine import hookimpl
    from medadapt.engine.contracts.hookspecs import ReportSection

    seen = {}

    class Checklist:
        @hookimpl
        def medadapt_report_sections(self, context):
            seen["auroc"] = context["results"]["model"]["auroc"]["value"]
            return [ReportSection("Physicist's checklist", "<p>Phantom QA done &amp; signed.</p>")]

    register(Checklist(), "checklist")
    result = CliRunner().invoke(
        cli,
        [
            "validate",
            "-p",
            str(validated["target"]),
            "--model",
            str(validated["model"]),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code in (ExitCode.OK, ExitCode.NOT_PASSED, ExitCode.NO_VERDICT)
    html = (tmp_path / REPORT_HTML).read_text()
    assert "<h2>Physicist&#39;s checklist</h2>\n<p>Phantom QA done &amp; signed.</p>" in html
    assert html.index("Physicist") < html.index("<h2>Provenance</h2>")
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    assert seen["auroc"] == report["results"]["model"]["auroc"]["value"]


def _chromium() -> str | None:
    import shutil

    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed")
def test_the_report_renders_and_prints_in_headless_chromium(validated, tmp_path):
    import struct
    import subprocess

    page = (validated["folder"] / "report" / REPORT_HTML).resolve().as_uri()
    common = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
    ]
    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    run = subprocess.run(
        [*common, "--window-size=1100,2400", f"--screenshot={shot}", page],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # The page's own errors (a broken image, a script error) are logged as console messages
    # or failed loads; the browser's complaints about the container (no D-Bus) are not.
    problems = [
        line
        for line in run.stderr.splitlines()
        if "CONSOLE" in line or "Failed to load" in line or "net::ERR" in line
    ]
    assert not problems, problems
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])
    assert (width, height) == (1100, 2400)
    printed = subprocess.run(
        [*common, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert pdf.read_bytes().startswith(b"%PDF")
    dom = subprocess.run(
        [*common, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<img") == dom.count("data:image/png;base64,") == 6
    # The warnings the report holds are on the rendered page, in the box after the verdict.
    report = validated["result"].report
    assert report["warnings"]
    for warning in report["warnings"]:
        assert warning["text"] in html.unescape(dom)


def test_failure_examples_show_the_missed_positives_first_then_the_false_alarms():
    from medadapt.engine.validation.evaluate import Predictions
    from medadapt.engine.validation.job import _failures

    profile = load_profile(TEMPLATE, None)  # positive class malignant, 6 examples
    # Positives the model scores low (missed) and negatives it scores high (false alarms).
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    scores = np.array([0.02, 0.30, 0.10, 0.90, 0.95, 0.60, 0.10, 0.80, 0.45, 0.20])
    test = Predictions(scores, labels, [f"p{i}" for i in range(10)])
    failures = _failures(test, 0.5, profile)
    assert (failures["missed_positives"], failures["false_alarms"]) == (4, 3)
    shown = [(e["kind"], e["score"]) for e in failures["examples"]]
    assert shown == [
        ("missed malignant", 0.02),
        ("missed malignant", 0.10),
        ("missed malignant", 0.30),
        ("false alarm", 0.95),
        ("false alarm", 0.80),
        ("false alarm", 0.60),
    ]
    # With few false alarms, the missed positives fill the examples, and the other way round.
    few_alarms = _failures(Predictions(scores[:5], labels[:5], ["p"] * 5), 0.5, profile)
    assert [e["kind"] for e in few_alarms["examples"]] == ["missed malignant"] * 3 + ["false alarm"]
    flagged = np.where(labels == 1, 0.9, 0.7)  # every positive found, every negative flagged
    no_misses = _failures(Predictions(flagged, labels, ["p"] * 10), 0.5, profile)
    assert [e["kind"] for e in no_misses["examples"]] == ["false alarm"] * 5


@pytest.mark.slow
def test_the_report_shows_the_missed_positives_it_counts(validated):
    report = validated["result"].report
    failures = report["failures"]
    assert failures["missed_positives"] > 0  # the hard site: the model misses some
    assert failures["examples"][0]["kind"] == "missed malignant"
    html = (validated["folder"] / "report" / REPORT_HTML).read_text()
    assert f"<strong>{failures['missed_positives']} malignant</strong>" in html


def _judged(judge_on: str, auroc: dict) -> dict:
    from medadapt.engine.profile import Acceptance
    from medadapt.engine.validation.acceptance import judge

    profile = load_profile(TEMPLATE, None)
    gate = Acceptance(min_auroc=0.85, max_calibration_error=0.2, judge_on=judge_on)
    profile = profile.model_copy(update={"acceptance": gate})
    calibration = {"value": 0.10, "low": 0.05, "high": 0.15}
    report = {
        "results": {"model": {"auroc": auroc, "calibration_error": calibration}},
        "comparison": None,
        "data": {"patients": {"test": 40}},
    }
    return judge(profile, report)


def test_a_criterion_met_on_the_estimate_but_not_the_interval_fails_on_the_lower_bound():
    auroc = {"value": 0.87, "low": 0.79, "high": 0.93}
    strict = _judged("lower_bound", auroc)
    assert strict["verdict"] == "fail"
    [criterion, calibration] = strict["criteria"]
    assert (criterion["judged_on"], criterion["measured"]) == ("lower_bound", 0.79)
    assert criterion["margin"] == pytest.approx(-0.06)
    # An "at most" is judged on the upper bound: 0.15 is within 0.2.
    assert (calibration["judged_on"], calibration["status"]) == ("upper_bound", "pass")
    assert strict["caveat"] is None

    lenient = _judged("point", auroc)
    assert lenient["verdict"] == "pass"
    assert lenient["criteria"][0]["crosses"]
    assert lenient["caveat"] == (
        "passes on the estimate; the interval of AUROC reaches below 0.85 (to 0.790)"
    )
    # Both figures are kept, labelled: the estimate with its interval, and what was judged.
    assert (lenient["criteria"][0]["estimate"], lenient["criteria"][0]["low"]) == (0.87, 0.79)
    # An interval wholly above the requirement passes either way, with no caveat.
    clear = {"value": 0.95, "low": 0.90, "high": 0.98}
    assert _judged("lower_bound", clear)["verdict"] == _judged("point", clear)["verdict"] == "pass"
    assert _judged("point", clear)["caveat"] is None


def test_without_an_interval_the_lower_bound_cannot_judge():
    judged = _judged("lower_bound", {"value": 0.95, "low": None, "high": None})
    assert judged["verdict"] == "no verdict"
    assert judged["criteria"][0]["status"] == "not measured"


@pytest.mark.slow
def test_the_verdict_box_says_where_the_interval_crosses(validated):
    from medadapt.engine.validation.acceptance import criterion_text
    from medadapt.engine.validation.report import render

    report = json.loads(json.dumps(validated["result"].report))
    auroc = report["results"]["model"]["auroc"]
    point = {**report, "acceptance": _judged("point", {**auroc, "value": 0.9, "low": 0.8})}
    html = render(point, dict.fromkeys(["roc", "calibration", "curves", "failures",
                                        "augmentations", "shift"]), [])  # fmt: skip
    box = html.split('<div class="verdict', 1)[1].split("</div>", 1)[0]
    assert "PASS" in box
    assert "passes on the estimate; the interval of AUROC reaches below 0.85" in box
    assert "interval crosses" in html
    assert criterion_text(point["acceptance"]["criteria"][0]) == (
        "AUROC at least 0.85: 0.900 (0.800 to "
        f"{auroc['high']:.3f}), judged on the estimate, margin 0.050 (the interval crosses)"
    )


def _report_for_warnings(**changes) -> dict:
    report = {
        "results": {"model": {"threshold": 0.5, "calibration_error": {"value": 0.03}}},
        "baseline_acceptance": {"verdict": "pass", "criteria": []},
        "subgroups": [],
        "models": {"model": {"adaptation": None}},
    }
    for key, value in changes.items():
        report[key] = value
    return report


def test_a_sound_report_has_no_warnings():
    from medadapt.engine.validation.acceptance import warnings

    assert warnings(_report_for_warnings(), load_profile(TEMPLATE, None)) == []


def test_fragile_numbers_give_warnings_that_say_what_to_do():
    from medadapt.engine.validation.acceptance import warnings

    profile = load_profile(TEMPLATE, None)
    fragile = {"threshold": 0.010, "calibration_error": {"value": 0.20}}
    failed = {
        "verdict": "fail",
        "criteria": [{"criterion": "AUROC at least 0.85", "status": "fail"}],
    }
    small = [{"attribute": "manufacturer", "value": "GE", "patients": 4, "too_small": True}]
    label_free = {"method": "coral", "decision": {"evidence": "label-free"}}
    found = warnings(
        _report_for_warnings(
            results={"model": fragile},
            baseline_acceptance=failed,
            subgroups=small,
            models={"model": {"adaptation": label_free}},
        ),
        profile,
    )
    assert [w["kind"] for w in found] == [
        "extreme_threshold",
        "calibration",
        "baseline_fails",
        "small_subgroups",
        "label_free_choice",
    ]
    text = {w["kind"]: w["text"] + " " + w["advice"] for w in found}
    assert "0.010" in text["extreme_threshold"]
    assert "Recalibrate" in text["extreme_threshold"]
    assert "0.200, above 0.1" in text["calibration"]
    assert "AUROC at least 0.85" in text["baseline_fails"]
    assert "manufacturer GE (4 patients)" in text["small_subgroups"]
    assert "label-free proposal" in text["label_free_choice"]
    assert "target_labels: validation" in text["label_free_choice"]
    assert warnings(_report_for_warnings(results={"model": {**fragile, "threshold": 0.97}}),
                    profile)[0]["kind"] == "extreme_threshold"  # fmt: skip


@pytest.mark.slow
def test_an_attribute_with_one_value_is_said_once_not_repeated_as_a_subgroup(validated):
    report = validated["result"].report
    # One simulated scanner: each attribute has one value across the test split.
    assert report["subgroups"]
    assert all(g["only_value"] for g in report["subgroups"])
    page = (validated["folder"] / "report" / REPORT_HTML).read_text()
    section = page.split("<h2>Subgroups</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<table>" not in section
    assert "Every test image has the same manufacturer" in html.unescape(section)


def test_the_domain_classifier_works_where_a_library_switched_metadata_routing_on():
    # SKADA turns scikit-learn's metadata routing on for the whole process when imported;
    # with it on, cross_val_predict refused the patients as groups and the shift failed.
    import numpy as np
    import sklearn

    from medadapt.engine.shift import domain_classifier_auroc

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.normal(2.0, size=(20, 4))
    groups = [f"a/{i // 2}" for i in range(20)] + [f"b/{i // 2}" for i in range(20)]
    with sklearn.config_context(enable_metadata_routing=True):
        routed = domain_classifier_auroc(x, y, groups)
    assert routed == domain_classifier_auroc(x, y, groups)
    assert routed > 0.9
