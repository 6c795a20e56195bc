"""The built-in label-free selection scores."""

from __future__ import annotations

import numpy as np
import pytest

from medadapt.engine import SourceValidation
from medadapt.plugins.selection_scores import (
    DeepEmbeddedValidation,
    Entropy,
    InformationMaximization,
    SoftNeighborhoodDensity,
)


def test_entropy_is_zero_for_certain_and_one_for_uniform_predictions():
    assert Entropy().score(np.eye(3)) == pytest.approx(0.0)
    assert Entropy().score(np.full((4, 3), 1 / 3)) == pytest.approx(1.0)


def test_entropy_ranks_the_more_confident_model_first():
    confident = np.array([[0.95, 0.05], [0.1, 0.9]])
    hesitant = np.array([[0.6, 0.4], [0.45, 0.55]])
    assert Entropy().score(confident) < Entropy().score(hesitant)
    assert Entropy.higher_is_better is False


def test_information_maximization_punishes_predicting_one_class_for_everyone():
    collapsed = np.array([[0.99, 0.01]] * 10)
    diverse = np.array([[0.99, 0.01], [0.01, 0.99]] * 5)
    im = InformationMaximization()
    assert im.score(collapsed) == pytest.approx(0.0, abs=1e-9)
    assert im.score(diverse) > 0.9
    assert Entropy().score(collapsed) == pytest.approx(Entropy().score(diverse))


def test_snd_prefers_a_model_whose_predictions_form_groups():
    rng = np.random.default_rng(0)
    # Two tight groups of predictions (a model that has found the classes) against the same
    # number of predictions spread evenly (one that has not).
    grouped = np.clip(np.repeat([[0.9], [0.1]], 50, axis=0) + rng.normal(0, 0.01, (100, 1)), 0, 1)
    spread = rng.uniform(0, 1, (100, 1))
    snd = SoftNeighborhoodDensity()
    as_table = lambda p: np.hstack([p, 1 - p])  # noqa: E731
    assert snd.score(as_table(grouped)) > snd.score(as_table(spread))
    assert 0.0 <= snd.score(as_table(spread)) <= 1.0
    assert SoftNeighborhoodDensity.higher_is_better
    with pytest.raises(ValueError, match="at least 3 samples"):
        snd.score(np.array([[0.5, 0.5], [0.2, 0.8]]))


def test_dev_counts_source_errors_where_the_target_patients_are():
    rng = np.random.default_rng(1)
    # Source patients in two groups; the target site only sees patients like group "near".
    far = rng.normal(-3.0, 0.5, (60, 2))
    near = rng.normal(3.0, 0.5, (60, 2))
    source_features = np.vstack([far, near])
    target_features = rng.normal(3.0, 0.5, (80, 2))
    labels = np.zeros(120, dtype=int)
    right, wrong = [0.95, 0.05], [0.05, 0.95]
    wrong_near = np.array([right] * 60 + [wrong] * 60)
    wrong_far = np.array([wrong] * 60 + [right] * 60)
    target = np.full((80, 2), 0.5)
    dev = DeepEmbeddedValidation()

    def risk(probabilities):
        source = SourceValidation(probabilities, source_features, labels)
        return dev.score(target, target_features, source=source)

    # Both models are wrong on half the source patients; only one is wrong where it matters.
    assert risk(wrong_near) > risk(wrong_far)
    assert DeepEmbeddedValidation.needs_source_data
    assert not DeepEmbeddedValidation.higher_is_better
    with pytest.raises(ValueError, match="needs target features"):
        dev.score(target, target_features)


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        (np.array([0.5, 0.5]), "shape \\(samples, classes\\)"),
        (np.ones((0, 2)), "at least one sample"),
        (np.array([[0.5, 0.6]]), "must sum to 1"),
        (np.array([[1.5, -0.5]]), "non-negative"),
        (np.array([[np.nan, 1.0]]), "finite"),
    ],
)
def test_scores_refuse_what_is_not_a_probability_table(probabilities, expected):
    with pytest.raises(ValueError, match=expected):
        Entropy().score(probabilities)
