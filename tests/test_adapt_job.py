"""The adapt job on simulated hospitals: what it may see, what it keeps, what it refuses."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from medadapt.engine import InvalidInputError, Split
from medadapt.engine.adaptation import SUMMARY, UNADAPTED, adapt, target_split
from medadapt.engine.cli import cli
from medadapt.engine.contracts.errors import ExitCode
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.data.samples import PatchLoader, open_site_data
from medadapt.engine.data.splits import split_by_patient
from medadapt.engine.models.model import load_model
from medadapt.engine.profile import load_profile
from medadapt.engine.training.job import train
from medadapt.engine.validation.evaluate import predict
from medadapt.plugins.decision_rules import ensemble_agreement

SOURCE = {
    "site": {"name": "Source Hospital"},
    "intended_use": "tests",
    "body_region": "chest",
    "seed": 3,
    "task": {
        "classes": ["benign", "malignant"],
        "positive_class": "malignant",
        "label_depends_on": ["shape", "texture", "absolute-hu"],
    },
    "data": {
        "source": "phantom",
        "params": {"patients": 24, "seed": 3, "slices": 12, "size": 96},
        "split": {"train": 0.5, "validation": 0.25, "test": 0.25},
    },
    "preprocessing": {
        "window": {"level": 40, "width": 400},
        "spacing_mm": [2.0, 1.0, 1.0],
        "patch_mode": "2d",
        "patch_size": [24, 24],
    },
    "backbone": {"name": "small-cnn"},
    "training": {"epochs": 2, "batch_size": 8, "early_stopping_patience": None},
    "acceptance": {"min_auroc": 0.8},
}


def target_profile(**adaptation) -> dict:
    profile = json.loads(json.dumps(SOURCE))
    profile["site"] = {"name": "Target Hospital"}
    profile["data"]["params"] = {
        "patients": 24,
        "seed": 8,
        "slices": 12,
        "size": 96,
        "scanner": "ge-sharp-low-dose",
    }
    profile["adaptation"] = {"candidates": ["adabn", "tent"], **adaptation}
    return profile


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """A source model trained at the source hospital, and the two profiles."""
    folder = tmp_path_factory.mktemp("sites")
    host = get_plugin_host()
    registry = host.registry()
    source = write(folder, "source.yaml", SOURCE)
    run = train(load_profile(source, registry), registry, host, folder / "source-run", quiet=True)
    return {"folder": folder, "source": source, "model": run.model_dir}


def load(path: Path):
    return load_profile(path, get_plugin_host().registry())


def run_adapt(sites, out: Path, profile: dict, **options):
    host = get_plugin_host()
    target = write(out.parent, f"{out.name}.yaml", profile)
    return adapt(load(target), host.registry(), host, sites["model"], out, quiet=True, **options)


@pytest.mark.slow
def test_auto_without_labels_scores_every_candidate_and_calls_its_choice_a_proposal(
    sites, tmp_path
):
    result = run_adapt(sites, tmp_path / "auto", target_profile())
    summary = json.loads((tmp_path / "auto" / SUMMARY).read_text())
    assert set(summary["methods"]) == {UNADAPTED, "adabn", "tent"}
    assert summary["selection"] == "information-maximization"
    assert summary["target_labels"] == "none"
    assert summary["samples"]["labelled"] == {}
    assert summary["samples"]["test_set_aside"] > 0
    decision = summary["decision"]
    assert decision["rule"] == "agreement-guard"
    assert decision["evidence"] == "label-free"
    assert decision["margin"] is None
    assert "label-free proposal (not measured; run validate)" in decision["statement"]
    agreement = {name: figures["agreement"] for name, figures in decision["figures"].items()}
    assert set(agreement) == {UNADAPTED, "adabn", "tent"}
    assert all(0.0 <= a <= 1.0 for a in agreement.values())
    # Nothing claims that adaptation helped: no labels measured it.
    assert "adaptation_helped" not in summary
    assert summary["measured_with_labels"] is False
    assert summary["adapted"] == (summary["kept"] != UNADAPTED)
    loaded = load_model(result.model_dir, get_plugin_host().registry())
    assert loaded.card.adaptation is not None
    assert loaded.card.adaptation.decision.statement == decision["statement"]
    assert loaded.card.adaptation.method == summary["kept"]
    assert loaded.card.adaptation.source_site == "Source Hospital"
    if result.adapted:
        assert loaded.card.site == "Target Hospital"
        assert loaded.card.adapted_to == "Target Hospital"
    else:
        assert loaded.card.site == "Source Hospital"
        assert loaded.card.adapted_to is None
    for name in summary["methods"]:
        assert (tmp_path / "auto" / "runs" / f"{name}-seed3" / "model" / "card.json").is_file()
    # Only now, with the model final, is the test split read: by evaluate.predict.
    target = load(tmp_path / "auto.yaml")
    predictions = predict(result.model_dir, target, get_plugin_host().registry())
    assert len(predictions.scores) == summary["samples"]["test_set_aside"]
    assert predictions.auroc is None or 0.0 <= predictions.auroc <= 1.0


@pytest.mark.slow
def test_the_target_test_split_is_never_read(sites, tmp_path, monkeypatch):
    profile = target_profile(method="tent")
    path = write(tmp_path, "target.yaml", profile)
    target = load(path)
    site = open_site_data(target, get_plugin_host().registry())
    assigned = split_by_patient(site.records, target.data.split, target.seed, "malignant")
    test_patients = {r.patient_key for r in assigned if r.split is Split.TEST}
    assert test_patients
    read: list[str] = []
    original = PatchLoader.patch_hu

    def spy(self, record):
        read.append(record.patient_key)
        return original(self, record)

    monkeypatch.setattr(PatchLoader, "patch_hu", spy)
    run_adapt(sites, tmp_path / "run", profile)
    assert read
    assert not set(read) & test_patients
    split = target_split(site.records, target)
    assert split.set_aside == sum(r.split is Split.TEST for r in assigned)
    assert all(r.label is None for r in split.train + split.validation)


def test_few_labels_keep_that_many_per_class_and_no_validation_label(tmp_path):
    path = write(tmp_path, "t.yaml", target_profile(target_labels="few", labels_per_class=2))
    target = load(path)
    site = open_site_data(target, get_plugin_host().registry())
    split = target_split(site.records, target)
    assert split.labelled == {"benign": 2, "malignant": 2}
    assert all(r.label is None for r in split.validation)


def test_a_label_budget_keeps_that_many_training_labels_and_every_validation_label(tmp_path):
    profile = target_profile(target_labels="all")
    profile["training"]["labels_per_class"] = 3
    target = load(write(tmp_path, "t.yaml", profile))
    site = open_site_data(target, get_plugin_host().registry())
    split = target_split(site.records, target)
    trained = Counter(r.label for r in split.train if r.label is not None)
    assert trained == {"benign": 3, "malignant": 3}
    unlimited = target.training.model_copy(update={"labels_per_class": None})
    everything = target_split(site.records, target.model_copy(update={"training": unlimited}))
    assert [r.label for r in split.validation] == [r.label for r in everything.validation]
    assert len(split.train) == 6  # the rest are left out, as in train
    assert sum(r.label is not None for r in everything.train) > 6


@pytest.mark.slow
def test_a_method_needing_source_data_is_refused_without_a_source_profile(sites, tmp_path):
    with pytest.raises(InvalidInputError, match="'coral' needs labelled source data"):
        run_adapt(sites, tmp_path / "coral", target_profile(method="coral"))


@pytest.mark.slow
def test_dev_selection_needs_and_uses_the_source_profile(sites, tmp_path):
    profile = target_profile(method="adabn")
    profile["selection"] = {"score": "dev"}
    with pytest.raises(InvalidInputError, match="'dev' needs the source site's validation"):
        run_adapt(sites, tmp_path / "no-source", profile)
    result = run_adapt(sites, tmp_path / "dev", profile, source_profile=load(sites["source"]))
    assert result.summary["selection"] == "dev"
    assert result.summary["methods"]["adabn"]["score_mean"] > 0


@pytest.mark.slow
def test_a_rerun_reuses_finished_runs(sites, tmp_path):
    profile = target_profile(method="adabn")
    first = run_adapt(sites, tmp_path / "again", profile)
    marker = tmp_path / "again" / "runs" / "adabn-seed3" / "candidate.json"
    stamp = marker.stat().st_mtime_ns
    second = run_adapt(sites, tmp_path / "again", profile)
    assert marker.stat().st_mtime_ns == stamp
    assert second.summary["methods"] == first.summary["methods"]


@pytest.mark.slow
def test_refuses_to_write_over_its_own_source_model(sites, tmp_path):
    # adapt --from X/model --out X: the source model would be replaced by the adapted one.
    source_run = sites["model"].parent
    weights = (sites["model"] / "weights.safetensors").read_bytes()
    target = write(tmp_path, "target.yaml", target_profile(method="adabn"))
    refused = CliRunner().invoke(
        cli, ["adapt", "-p", str(target), "--from", str(sites["model"]), "--out", str(source_run)]
    )
    assert refused.exit_code == ExitCode.INVALID_INPUT, refused.output
    assert "holds this job's own input" in refused.output
    assert "--overwrite" in refused.output
    assert (sites["model"] / "weights.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_a_rerun_with_another_method_is_refused_unless_overwrite(sites, tmp_path):
    run_adapt(sites, tmp_path / "o", target_profile(method="adabn"))
    kept = (tmp_path / "o" / "model" / "weights.safetensors").read_bytes()
    with pytest.raises(InvalidInputError, match="method: adabn then, tent now"):
        run_adapt(sites, tmp_path / "o", target_profile(method="tent"))
    assert (tmp_path / "o" / "model" / "weights.safetensors").read_bytes() == kept
    again = run_adapt(sites, tmp_path / "o", target_profile(method="tent"), overwrite=True)
    assert again.kept == "tent"
    assert not (tmp_path / "o" / "runs" / "adabn-seed3").exists()  # started afresh


@pytest.mark.slow
def test_coral_with_the_source_profile_and_two_seeds(sites, tmp_path):
    result = run_adapt(
        sites,
        tmp_path / "coral",
        target_profile(method="coral"),
        source_profile=load(sites["source"]),
        seeds=2,
    )
    runs = result.summary["methods"]["coral"]["runs"]
    assert [r["seed"] for r in runs] == [3, 4]
    # With the source profile and no selection.score in the profile, DEV chooses.
    assert result.summary["selection"] == "dev"
    assert result.summary["selection_higher_is_better"] is False
    assert result.summary["methods"]["coral"]["score_sd"] >= 0.0
    assert result.kept == "coral"
    assert result.decision.statement.startswith("kept coral as asked, not compared with")


@pytest.mark.slow
def test_the_command_line_adapts_and_explains_refusals(sites, tmp_path):
    target = write(tmp_path, "target.yaml", target_profile(method="adabn"))
    runner = CliRunner()
    ok = runner.invoke(
        cli,
        ["adapt", "-p", str(target), "--from", str(sites["model"]), "--out", str(tmp_path / "o")],
    )
    assert ok.exit_code == 0, ok.output
    assert "model written to" in ok.output
    # One line says what was kept and on what evidence.
    assert ok.output.strip().splitlines()[-1] == (
        "kept adabn as asked, not compared with the unadapted model (no validation labels; "
        "not measured: run validate)"
    )
    refused = runner.invoke(
        cli,
        ["adapt", "-p", str(target), "--from", str(sites["model"]), "--method", "finetune"],
    )
    assert refused.exit_code == ExitCode.INVALID_INPUT
    assert "adaptation.target_labels is none" in refused.output
    assert "training patients" in refused.output
    other = json.loads(json.dumps(target_profile()))
    other["preprocessing"]["window"] = {"level": -600, "width": 1500}
    mismatched = write(tmp_path, "mismatch.yaml", other)
    refused = runner.invoke(cli, ["adapt", "-p", str(mismatched), "--from", str(sites["model"])])
    assert refused.exit_code == ExitCode.INVALID_INPUT
    assert "preprocessing.window: the model expects" in refused.output


@pytest.mark.slow
def test_other_classes_get_a_new_head_and_only_finetune(sites, tmp_path):
    from medadapt.engine.adaptation.access import candidate_methods as _candidates
    from medadapt.engine.adaptation.runs import fresh_model
    from medadapt.engine.profile import AdaptationChoice

    registry = get_plugin_host().registry()
    loaded = load_model(sites["model"], registry)
    model, _ = fresh_model(registry, loaded.card, loaded.model.state_dict(), 3)
    assert model.head.out_features == 3
    for key, value in loaded.model.features.state_dict().items():
        assert (model.features.state_dict()[key] == value).all()
    few = AdaptationChoice(target_labels="few")
    assert _candidates("auto", few, registry, False, same_classes=False) == ["finetune"]
    with pytest.raises(InvalidInputError, match="keeps the source model's classes"):
        _candidates("tent", few, registry, False, same_classes=False)
    with pytest.raises(InvalidInputError, match="only finetune"):
        _candidates("auto", AdaptationChoice(), registry, False, same_classes=False)


@pytest.mark.slow
def test_finetune_keeps_frozen_stages_as_loaded(sites, tmp_path):
    from safetensors.torch import load_file

    profile = target_profile(method="finetune", target_labels="all")
    profile["training"] = {**profile["training"], "freeze": ["stem"]}
    run_adapt(sites, tmp_path / "frozen", profile)
    source = load_file(str(sites["model"] / "weights.safetensors"))
    run = tmp_path / "frozen" / "runs" / "finetune-seed3" / "model"
    adapted = load_file(str(run / "weights.safetensors"))
    stem = [k for k in source if k.startswith("features.stem.")]
    assert stem
    for key in stem:
        assert (adapted[key] == source[key]).all(), key
    assert any(not (adapted[k] == source[k]).all() for k in source if k.startswith("head."))
    profile["training"]["freeze"] = ["trunk"]
    with pytest.raises(InvalidInputError, match="does not have; its stages are"):
        run_adapt(sites, tmp_path / "unknown", profile)


def test_ensemble_agreement_leaves_each_candidate_out_of_its_own_ensemble():
    # "odd" is confident and disagrees with the others. Its own vote tips the mean of all
    # four its way, so the published rule would rate it best (full agreement); left out of
    # its own ensemble, it agrees with nothing and "c", which sides with the others on the
    # second sample, is rated best.
    a = b = np.array([[0.55, 0.45], [0.55, 0.45]])
    c = np.array([[0.6, 0.4], [0.45, 0.55]])
    odd = np.array([[0.0, 1.0], [0.0, 1.0]])
    with_self = np.mean([a, b, c, odd], axis=0).argmax(axis=1)
    assert (odd.argmax(axis=1) == with_self).mean() == 1.0
    agreement = ensemble_agreement({"a": a, "b": b, "c": c, "odd": odd})
    assert agreement == {"a": 0.0, "b": 0.0, "c": 0.5, "odd": 0.0}
    assert ensemble_agreement({"only": a}) == {"only": 1.0}


@pytest.mark.slow
def test_validation_labels_choose_the_epochs_and_the_model_and_no_method_trains_on_them(
    sites, tmp_path
):
    profile = target_profile(target_labels="validation")
    target = load(write(tmp_path, "labelled.yaml", profile))
    split = target_split(open_site_data(target, get_plugin_host().registry()).records, target)
    assert all(r.label is None for r in split.train)
    assert split.validation
    assert all(r.label is not None for r in split.validation)
    result = run_adapt(sites, tmp_path / "labelled", profile)
    summary = result.summary
    assert set(summary["methods"]) == {UNADAPTED, "adabn", "tent"}
    assert summary["selection"] == "validation AUROC (target labels)"
    decision = summary["decision"]
    assert decision["rule"] == "validation-bootstrap"
    assert decision["evidence"] == "labels"
    assert summary["measured_with_labels"] is True
    patients = summary["samples"]["validation_patients"]
    assert f"on {patients} labelled patients" in decision["statement"]
    margin = decision["margin"]
    assert margin["patients"] == patients
    assert margin["low"] <= margin["value"] <= margin["high"]
    if result.adapted:
        assert margin["low"] > 0.0
        assert decision["statement"].startswith(f"kept {result.kept}: validation AUROC +")
    else:
        assert margin["low"] <= 0.0
        assert decision["statement"].startswith("kept the unadapted model")
    card = load_model(result.model_dir, get_plugin_host().registry()).card
    assert card.adaptation.decision.evidence == "labels"
    assert card.adaptation.decision.margin == margin


def test_a_decision_rule_that_needs_labels_is_refused_without_them(tmp_path):
    from medadapt.engine.profile import ProfileError

    profile = target_profile(decision={"rule": "validation-bootstrap"})
    with pytest.raises(ProfileError, match="needs labelled validation patients"):
        load(write(tmp_path, "refused.yaml", profile))
    profile["adaptation"]["decision"] = {"rule": "agreement-gaurd"}
    with pytest.raises(ProfileError, match="did you mean 'agreement-guard'"):
        load(write(tmp_path, "typo.yaml", profile))


@pytest.mark.slow
def test_every_epoch_is_kept_and_shown_to_an_observer(sites, tmp_path):
    from medadapt.engine.training.checkpoints import validation_predictions

    seen: list[tuple[str, int, int, int]] = []

    def observe(method, seed, epoch, predict):
        seen.append((method, seed, epoch, len(predict(validation, False).probabilities)))

    from medadapt.engine.data.datasets import PatchDataset

    profile = target_profile(method="tent")
    target = load(write(tmp_path, "observed.yaml", profile))
    site = open_site_data(target, get_plugin_host().registry())
    split = target_split(site.records, target)
    validation = PatchDataset(site.loader, split.validation, target.task.classes)
    host = get_plugin_host()
    result = adapt(
        target, host.registry(), host, sites["model"], tmp_path / "o", quiet=True, observer=observe
    )
    [run] = result.runs
    epochs = validation_predictions(run.folder)
    history = json.loads((run.folder / "history.json").read_text())["history"]
    assert sorted(epochs) == [e["epoch"] for e in history] == [1, 2]
    assert seen == [("tent", 3, 1, len(split.validation)), ("tent", 3, 2, len(split.validation))]
    np.testing.assert_allclose(epochs[run.best_epoch], run.probabilities(), atol=1e-6)


@pytest.mark.slow
def test_auto_says_after_each_run_how_long_the_rest_will_take(sites, tmp_path, caplog):
    host = get_plugin_host()
    target = write(tmp_path, "estimate.yaml", target_profile())

    def lines() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="medadapt"):
            adapt(load(target), host.registry(), host, sites["model"], tmp_path / "o")
        return [r.getMessage() for r in caplog.records if "runs done" in r.getMessage()]

    first = lines()
    # Three runs (the unadapted model, adabn, tent): an estimate after each but the last.
    assert [line.split(" (")[0] for line in first] == [
        "adapt: 1 of 3 runs done",
        "adapt: 2 of 3 runs done",
    ]
    assert first[0].startswith(f"adapt: 1 of 3 runs done ({UNADAPTED}, seed 3: ")
    # Nothing that trains was timed yet: a training epoch costs at least what a pass did.
    assert all(re.search(r"; at least [0-9].* left$", line) for line in first), first
    # Run again, everything is reused: nothing was timed, so nothing is estimated.
    again = lines()
    assert all("reused); time left not known yet" in line for line in again), again
