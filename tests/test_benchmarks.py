"""The benchmark suite: its quick mode produces every table, and RESULTS.md is generated."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def suite():
    import sklearn

    sys.path.insert(0, str(BENCHMARKS))
    routing = sklearn.get_config()["enable_metadata_routing"]
    try:
        yield importlib.import_module("suite")
    finally:
        sys.path.remove(str(BENCHMARKS))
        # SKADA switches scikit-learn's metadata routing on for the whole process when it is
        # imported (peers.py imports it); the other tests run as a user's process would.
        sklearn.set_config(enable_metadata_routing=routing)


def test_a_section_is_written_with_its_csv_and_dated(suite, tmp_path):
    section = suite.Section(
        heading="Example",
        lines=["| a | b |", "|---|---|", "| 1 | 2 |"],
        tables={"example": [{"a": 1, "b": 2}, {"a": 3, "c": 4}]},
        command="python benchmarks/example.py",
    )
    suite.record("dicom_scan", section, tmp_path, quick=False, seconds=90)
    results = suite.render(tmp_path).read_text()
    assert "## Example" in results
    assert "Measured " in results
    assert "in 1.5 min" in results
    assert "Raw numbers: results/example.csv." in results
    assert "Quick mode" not in results
    assert "Not measured yet: `dicom_loading`" in results
    with (tmp_path / "results" / "example.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]


def test_the_header_gives_the_duration_from_nothing_with_what_kept_pair_seeds_cost(suite, tmp_path):
    suite.record("dicom_scan", suite.Section("Scan", ["text"]), tmp_path, False, seconds=600)
    kept = suite.Section("Adaptation", ["text"], kept_seconds=5400.0, kept_untimed=1)
    suite.record("adaptation", kept, tmp_path, quick=False, seconds=1800)
    # Not part of make bench: not counted.
    optional = suite.Section("Augmentation", ["text"])
    suite.record("augmentation_effect", optional, tmp_path, quick=False, seconds=3600)
    header = suite.render(tmp_path).read_text().split("Sections:")[0]
    # 10 + 30 minutes measured in this run, 90 kept: 130 minutes.
    assert "`make bench` from nothing, as its sections were last measured: 2.2 hours" in header
    assert "(adaptation 2.0 h, dicom_scan 0.2 h;" in header
    assert "1.5 h of it by pair-seeds kept from an earlier run of the same code" in header
    assert "1 kept pair-seeds whose time was not recorded are not counted" in header
    assert "not measured yet: dicom_loading," in header
    assert "eight and a half" not in header


def test_a_kept_pair_seed_keeps_what_measuring_it_cost(suite, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    monkeypatch.setattr(suite, "HERE", tmp_path / "benchmarks")
    for top in (*suite.Finished.SOURCES, "benchmarks"):
        (tmp_path / top).mkdir()
    (tmp_path / "benchmarks" / "suite.py").write_text("")
    settings = type("Settings", (), {"development": False, "epochs": 3})()
    done = suite.Finished(settings, False, "example", ())
    assert done.get("sharp kernel", 7) is None
    clock = iter([100.0, 142.5])
    with monkeypatch.context() as timed:
        timed.setattr(suite.time, "perf_counter", lambda: next(clock))
        done.get("sharp kernel", 8)
        done.put("sharp kernel", 8, {"auroc": 0.9})
    again = suite.Finished(settings, False, "example", ())
    assert again.get("sharp kernel", 8) == {"auroc": 0.9}
    assert (again.kept_seconds, again.kept_untimed) == (42.5, 0)


def test_the_commit_measured_ignores_the_benchmarks_own_outputs(suite, tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "a.csv").write_text("1\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    (tmp_path / "benchmarks" / "results" / "a.csv").write_text("2\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("new\n")
    assert "+changes" not in suite.commit()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert suite.commit().endswith(" +changes")


def test_quick_results_say_they_are_not_results(suite, tmp_path):
    section = suite.Section(heading="Example", lines=["text"], command="x")
    suite.record("dicom_scan", section, tmp_path, quick=True, seconds=1)
    assert "Quick mode" in suite.render(tmp_path).read_text()


def test_a_run_has_converged_at_the_first_epoch_within_five_percent_of_its_lowest_loss(suite):
    import transfer

    assert transfer.converged_epoch([1.0, 0.6, 0.52, 0.5, 0.55]) == 3
    assert transfer.converged_epoch([0.4, 0.5, 0.6]) == 1
    assert transfer.converged_epoch([0.9, 0.8, 0.7, 0.6]) == 4


def test_the_transfer_findings_say_better_only_beyond_seed_to_seed_variation(suite):
    import transfer

    def seed(offset: float) -> dict:
        # Every row at 0.80, except L2-SP: 0.05 better at 5 per class on every seed, and
        # at 10 per class better on one seed and worse on the other.
        rows = {}
        for size, l2sp in (("5", 0.85 + offset), ("10", 0.80 + 4 * offset)):
            rows[size] = {
                row: {"test_auroc": 0.80, "converged_epoch": 5, "kept": "", "val_loss": [1.0]}
                for row in transfer.ROWS
            }
            rows[size][transfer.L2SP]["test_auroc"] = l2sp
        return {"rows": rows}

    lines = transfer._findings([seed(0.01), seed(-0.01)], ["5", "10"], oracle=0.95)
    [l2sp] = [line for line in lines if line.startswith(f"- {transfer.L2SP}:")]
    assert "**better than from scratch** at 5 (+0.050 ± 0.010) per class" in l2sp
    assert "beyond seed-to-seed variation at 10 (+0.000 ± 0.040) per class" in l2sp
    [whole] = [line for line in lines if line.startswith(f"- {transfer.WHOLE}:")]
    assert "better" not in whole
    assert "worse" not in whole
    assert "5 per class 0.150, 10 per class 0.150" in lines[-2]


def test_a_section_writes_its_files_beside_its_tables(suite, tmp_path):
    section = suite.Section(heading="F", lines=["x"], command="x", files={"f.png": b"\x89PNG"})
    suite.record("dicom_scan", section, tmp_path, quick=False, seconds=1)
    assert (tmp_path / "results" / "f.png").read_bytes() == b"\x89PNG"


def test_skadas_shipped_dann_discriminator_trains_nothing_and_the_sigmoid_one_does(suite):
    peers = importlib.import_module("peers")
    check = peers.shipped_discriminator_check()
    assert check["shipped output min"] == check["shipped output max"] == 1.0
    assert check["shipped gradient"] == 0.0
    assert 0.0 < check["sigmoid output min"] < check["sigmoid output max"] < 1.0
    assert check["sigmoid gradient"] > 0.0


def test_skadas_results_are_reused_only_when_version_data_weights_and_settings_match(
    suite, tmp_path, monkeypatch
):
    import numpy as np
    import torch

    peers = importlib.import_module("peers")
    calls = []

    def fake_run(method, classifier, source, target, test, **settings):
        calls.append(method)
        return peers.PeerRun(method, np.full((len(test), 2), 0.5), 2.0, settings["epochs"])

    monkeypatch.setattr(peers, "run_skada", fake_run)
    model = torch.nn.Linear(4, 2)
    rng = np.random.default_rng(0)
    source = (rng.normal(size=(8, 4)).astype(np.float32), np.arange(8) % 2)
    target, test = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    machine = {"cores": 2}
    settings = {"epochs": 3, "batch_size": 4, "lr": 1e-3, "weight_decay": 1e-4, "seed": 1}

    def run(**changes):
        given = {"source": source, "target": target, "machine": machine, **settings, **changes}
        return peers.run_skada_cached(tmp_path, "DANN", model, test=test, **given)

    first, reused = run()
    assert not reused
    assert calls == ["DANN"]
    again, reused = run()
    assert reused
    assert calls == ["DANN"]
    np.testing.assert_array_equal(again.probabilities, first.probabilities)
    assert (again.seconds, again.epochs) == (first.seconds, first.epochs)
    # Anything that could change SKADA's result runs it again.
    run(epochs=4)
    run(target=target + 1.0)
    run(machine={"cores": 16})
    with torch.no_grad():
        model.weight.add_(1.0)
    run()
    monkeypatch.setattr(importlib.import_module("skada"), "__version__", "99.0")
    run()
    assert len(calls) == 6


#: What each benchmark's section must show beyond its table, checked in quick mode.
SHOWS = {
    # The comparison with SKADA and every target.
    "adaptation": [
        "SKADA DANN",
        "SKADA DANN, sigmoid discriminator",
        "SKADA DeepCoral",
        "DANN target",
        "auto target",
        "time target",
        "vs SKADA per sample",
        "its BCE domain loss is",
    ],
    # The head site's check, the learning curves and their figure.
    "transfer": [
        "oracle beats source only by at least 0.1 on every development seed",
        "| from scratch |",
        "| ImageNet EfficientNet-Lite0 |",
        "| EfficientNet-Lite0, random weights |",
        "The ImageNet row taken apart.",
        "![Validation loss per epoch](results/transfer_val_loss.png)",
    ],
    "epoch_profile": ["| part of a DANN epoch |", "bare PyTorch", "SKADA DANN"],
    "dicom_loading": ["the limit with every core", "medadapt load_hu, one process"],
    # The machine's limit, measured beside the Dask runs.
    "batch_throughput": ["(the machine's limit) |", "Against the machine's limit measured"],
}
#: Benchmarks quick enough to share one test (and one worker); the others have one each.
LIGHT = ["dicom_loading", "dicom_scan", "phantom_generation", "training_loop", "source_model"]


def _quick_names():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        names = importlib.import_module("suite").BENCHMARKS
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert set(LIGHT) <= set(names)
    chosen = [",".join(LIGHT)] + [name for name in names if name not in LIGHT]
    return [pytest.param(n, marks=pytest.mark.xdist_group(f"bench {n}")) for n in chosen]


# Each benchmark in quick mode, in a test of its own (under `make test`'s two workers they run
# side by side); together they are `make bench-quick`.
@pytest.mark.slow
@pytest.mark.parametrize("names", _quick_names())
def test_quick_mode_runs_each_benchmark_and_writes_its_tables(suite, tmp_path, names):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "suite.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--only",
            *names.split(","),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (tmp_path / "RESULTS.md").read_text()
    for name in names.split(","):
        meta = (tmp_path / "results" / f"{name}.json").read_text()
        section = (tmp_path / "results" / f"{name}.md").read_text()
        assert section in results
        assert "|---" in section, f"{name} has no table"
        assert '"quick": true' in meta
        for table in suite.json.loads(meta)["tables"]:
            with (tmp_path / "results" / f"{table}.csv").open() as handle:
                assert list(csv.DictReader(handle)), f"{table}.csv is empty"
        for text in SHOWS.get(name, []):
            assert text in section, f"{name}: {text!r} missing"
    if "transfer" in names:
        assert (tmp_path / "results" / "transfer_val_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_quick_tests_run_every_benchmark(suite):
    names = ",".join(param.values[0] for param in _quick_names()).split(",")
    assert sorted(names) == sorted(suite.BENCHMARKS)


@pytest.mark.slow
@pytest.mark.xdist_group("bench augmentation_effect")
def test_the_augmentation_benchmark_runs_in_quick_mode(suite, tmp_path):
    # It read the model card as a dict (card["preprocessing"]) and raised a TypeError
    # before anything was measured; nothing ran it.
    import augmentation_effect

    section = augmentation_effect.run(quick=True, work=tmp_path)
    text = "\n".join(section.lines)
    assert "| 20 | safe default set |" in text
    assert "The profile check refuses the unsafe set for the honest task" in text
    rows = section.tables["augmentation_effect"]
    assert {row["experiment"] for row in rows} == {"small data", "scanner"}
    assert all(0.0 <= row["auroc"] <= 1.0 for row in rows)


def test_the_method_study_tables_each_variant_over_the_development_seeds(
    suite, tmp_path, monkeypatch
):
    import json

    study = importlib.import_module("method_study")
    monkeypatch.setattr(study, "OUT", tmp_path)
    for seed, auroc in zip(study.DEVELOPMENT_SEEDS, (0.7, 0.8, 0.9), strict=True):
        path = study._result("head", seed, "dann, one pass")
        path.write_text(json.dumps({"selected": auroc, "last": auroc - 0.1}))
    assert study._result("head", 1, "SKADA DANN, sigmoid discriminator").name == (
        "head-seed1-SKADA_DANN_sigmoid_discriminator.json"
    )
    table = study.summary()
    [row] = [line for line in table.splitlines() if line.startswith("| dann, one pass |")]
    # Measured on the head pair only: its cell is the third.
    assert row.split(" | ")[3].startswith("0.800 (0.700, 0.800, 0.900); last 0.700")
    assert row.split(" | ")[1] == ""


@pytest.mark.parametrize("method", ["dann", "coral", "mmd", "shot", "tent"])
def test_the_method_studys_variants_set_the_incomplete_batch_whatever_the_default(suite, method):
    from medadapt.engine import ComponentKind, get_plugin_host

    study = importlib.import_module("method_study")
    cls = get_plugin_host().registry().get(ComponentKind.ADAPTATION_METHODS, method)
    default = cls.drop_incomplete_batch
    for drop in (False, True):
        patch = study._target_batches(method, drop)
        with patch():
            assert cls.drop_incomplete_batch is drop
        assert cls.drop_incomplete_batch is default  # put back
    variants = {n: patch for n, (m, patch, _) in study.VARIANTS.items() if m == method}
    assert sum("dropped" in name for name in variants) == 1
    for name, patch in variants.items():
        with patch():
            assert cls.drop_incomplete_batch is ("dropped" in name), name
        assert cls.drop_incomplete_batch is default
