"""The report's numbers: scikit-learn's point estimates, patient-level bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medadapt.engine.validation.metrics import (
    PatientBootstrap,
    apply_temperature,
    auroc,
    confusion,
    expected_calibration_error,
    fit_temperature,
    operating_threshold,
    rank_auroc,
    rates,
    reliability,
    resampled_auroc,
)


def _data(n_patients: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    patients = [f"p{i}" for i in range(n_patients) for _ in range(1 + i % 3)]
    labels = rng.integers(0, 2, len(patients))
    scores = np.clip(labels * 0.3 + rng.random(len(patients)) * 0.7, 0, 1)
    return np.array(labels), scores, patients


def test_rates_and_confusion_agree_with_a_count_by_hand():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    assert rates(labels, scores, 0.5) == {
        "sensitivity": 2 / 3,
        "specificity": 3 / 4,
        "ppv": 2 / 3,
        "npv": 3 / 4,
    }
    assert confusion(labels, scores, 0.5) == {
        "true_positive": 2,
        "false_positive": 1,
        "false_negative": 1,
        "true_negative": 3,
    }
    assert rates(labels, scores, 2.0)["ppv"] is None  # no positive call: undefined, not 0


def test_operating_point_rules():
    labels, scores, _ = _data()
    threshold = operating_threshold(labels, scores, "min_sensitivity", 0.9)
    assert rates(labels, scores, threshold)["sensitivity"] >= 0.9
    # The highest such threshold: any higher score misses the target.
    higher = scores[scores > threshold]
    if len(higher):
        assert rates(labels, scores, higher.min())["sensitivity"] < 0.9
    threshold = operating_threshold(labels, scores, "min_specificity", 0.8)
    assert rates(labels, scores, threshold)["specificity"] >= 0.8
    youden = operating_threshold(labels, scores, "youden", None)
    best = max(
        rates(labels, scores, t)["sensitivity"] + rates(labels, scores, t)["specificity"]
        for t in np.unique(scores)
    )
    chosen = rates(labels, scores, youden)
    assert chosen["sensitivity"] + chosen["specificity"] == pytest.approx(best)
    with pytest.raises(ValueError, match="both classes"):
        operating_threshold(np.zeros(4), scores[:4], "youden", None)


def test_calibration_error_and_reliability_bins():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.05, 0.15, 0.85, 0.95, 0.9, 0.9])
    table = reliability(labels, scores)
    assert sum(row["n"] for row in table) == 6
    # Bins: [0.0-0.1) {0.05: 0}, [0.1-0.2) {0.15: 0}, [0.8-0.9) {0.85: 1},
    # [0.9-1.0] {0.95: 1, 0.9: 1, 0.9: 0}.
    expected = (0.05 + 0.15 + 0.15 + 3 * abs((0.95 + 0.9 + 0.9) / 3 - 2 / 3)) / 6
    assert expected_calibration_error(labels, scores) == pytest.approx(expected)


def test_temperature_scaling_keeps_the_ranking_and_improves_an_over_confident_model():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    honest = np.clip(0.5 + (labels - 0.5) * 0.4 + rng.normal(0, 0.2, 400), 0.01, 0.99)
    over = apply_temperature(honest, 0.25)  # the same ranking, far too confident
    temperature = fit_temperature(labels, over)
    assert temperature > 1.5  # softens what was sharpened
    fixed = apply_temperature(over, temperature)
    assert roc_auc_score(labels, fixed) == pytest.approx(roc_auc_score(labels, over))
    assert expected_calibration_error(labels, fixed) < expected_calibration_error(labels, over)


def test_the_bootstrap_resamples_patients_and_its_interval_covers_the_estimate():
    labels, scores, patients = _data()
    boot = PatientBootstrap(patients, resamples=300, seed=3)
    for idx in boot.indices()[:20]:
        # Whole patients: a patient's samples are drawn together, as often as the patient.
        drawn = [patients[i] for i in idx]
        for patient in set(drawn):
            assert drawn.count(patient) % patients.count(patient) == 0
    estimate = boot.estimate(lambda idx: auroc(labels[idx], scores[idx]))
    assert estimate.value == pytest.approx(roc_auc_score(labels, scores))
    assert estimate.low < estimate.value < estimate.high
    assert estimate.n == len(labels)
    # The same seed gives the same interval; a larger sample a narrower one.
    assert boot.estimate(lambda idx: auroc(labels[idx], scores[idx])) == estimate
    big_labels, big_scores, big_patients = _data(400)
    wide = estimate.high - estimate.low
    narrow = PatientBootstrap(big_patients, resamples=300, seed=3).estimate(
        lambda idx: auroc(big_labels[idx], big_scores[idx])
    )
    assert narrow.high - narrow.low < wide


def test_an_undefined_statistic_has_no_interval():
    boot = PatientBootstrap(["a", "b"], resamples=50)
    labels = np.array([1, 0])
    # Half the resamples or more hold one class: no interval rather than a biased one.
    estimate = boot.estimate(lambda idx: auroc(labels[idx], np.array([0.9, 0.1])[idx]))
    assert estimate.value == 1.0
    assert estimate.low is None
    assert boot.estimate(lambda idx: None).value is None


def test_the_rank_auroc_of_the_resamples_is_scikit_learns():
    rng = np.random.default_rng(5)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        scores = rng.integers(0, 6, 30) / 5  # many ties
        if 0 < labels.sum() < 30:
            assert rank_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert rank_auroc(np.ones(3), np.arange(3.0)) is None


def test_the_resampled_auroc_of_all_resamples_at_once_is_each_resamples_rank_auroc():
    rng = np.random.default_rng(8)
    for ties in (False, True):
        labels = rng.integers(0, 2, 45)
        scores = rng.integers(0, 5, 45) / 4 if ties else rng.random(45)
        patients = [f"p{i // 3}" for i in range(45)]  # three samples per patient
        boot = PatientBootstrap(patients, resamples=300, seed=2)
        weights = boot.weights()
        assert weights.shape == (300, 45)
        # The weights are the resamples of indices(), counted.
        for row, idx in zip(weights[:20], boot.indices()[:20], strict=False):
            assert np.array_equal(row, np.bincount(idx, minlength=45))
        expected = [rank_auroc(labels[i], scores[i]) for i in boot.indices()]
        fast = resampled_auroc(labels, scores, weights)
        assert np.array_equal(np.isnan(fast), [e is None for e in expected])
        assert fast[~np.isnan(fast)] == pytest.approx([e for e in expected if e is not None])
        # And the interval is the one estimate() computes resample by resample.
        value = rank_auroc(labels, scores)
        assert boot.interval(value, fast) == boot.estimate(
            lambda i, y=labels, s=scores: rank_auroc(y[i], s[i])
        )
