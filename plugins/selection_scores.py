"""Label-free model-selection scores computed from a model's target-site predictions.

Without target labels, a model cannot be scored by accuracy; these scores rank candidate
models (epochs, hyper-parameters) by how their predictions on unlabelled target data
behave. They are proxies, and the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medadapt.engine import SelectionScore, SourceValidation, hookimpl


def check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Return predictions as a float64 (samples, classes) array, or raise ValueError.

    Example:
        >>> check_probabilities(np.array([[0.2, 0.8]])).shape
        (1, 2)
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(
            f"expected predicted probabilities of shape (samples, classes) with at least one "
            f"sample and two classes, got shape {p.shape}"
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("predicted probabilities must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of predicted probabilities must sum to 1 (apply softmax)")
    return p


def normalised_entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy along the last axis, divided by its maximum: 0 certain, 1 uniform."""
    # 0 * log(0) is 0: take the log of 1 where a class has no probability.
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1) / np.log(p.shape[-1])


class Entropy(SelectionScore):
    """Mean prediction entropy on target data: lower means a more confident model."""

    name = "entropy"
    higher_is_better = False

    def score(self, probabilities: np.ndarray, features: np.ndarray | None = None) -> float:
        """Mean normalised entropy of each prediction, between 0 and 1.

        Example:
            >>> Entropy().score(np.array([[0.5, 0.5], [1.0, 0.0]]))
            0.5
        """
        return float(normalised_entropy(check_probabilities(probabilities)).mean())


class InformationMaximization(SelectionScore):
    """Confident predictions that still use every class: higher is better.

    The entropy of the mean prediction minus the mean entropy of each prediction, the
    quantity SHOT maximises (Liang et al., 2020). A model that predicts one class for every
    patient scores 0 however confident it is.
    """

    name = "information-maximization"
    higher_is_better = True

    def score(self, probabilities: np.ndarray, features: np.ndarray | None = None) -> float:
        """Mutual information between inputs and predictions, normalised to [0, 1].

        Example:
            >>> InformationMaximization().score(np.array([[1.0, 0.0], [0.0, 1.0]]))
            1.0
        """
        p = check_probabilities(probabilities)
        diversity = normalised_entropy(p.mean(axis=0))
        return float(diversity - normalised_entropy(p).mean())


class SoftNeighborhoodDensity(SelectionScore):
    """Soft neighbourhood density (SND, Saito et al., 2021): higher is better.

    Each target prediction's neighbours are weighed by a softmax over its similarity to every
    other prediction (cosine similarity of the probability vectors, temperature 0.05). A
    model whose predictions form tight groups, as when similar patients get similar
    outputs, has neighbourhoods spread over many close points: a high entropy of those
    weights. Predictions scattered at random, or one class for everyone with varying
    confidence, have sharper neighbourhoods. The score is the mean entropy, normalised by its
    maximum (the log of the number of other samples).
    """

    name = "snd"
    higher_is_better = True
    #: The softmax temperature of the paper.
    temperature = 0.05

    def score(self, probabilities: np.ndarray, features: np.ndarray | None = None) -> float:
        """Mean normalised entropy of each sample's soft neighbourhood, in [0, 1].

        Example:
            >>> clustered = np.array([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)
            >>> scattered = np.array([[x, 1 - x] for x in np.linspace(0.0, 1.0, 8)])
            >>> snd = SoftNeighborhoodDensity()
            >>> snd.score(clustered) > snd.score(scattered)
            True
        """
        p = check_probabilities(probabilities)
        n = p.shape[0]
        if n < 3:
            raise ValueError(f"SND needs predictions for at least 3 samples, got {n}")
        unit = p / np.linalg.norm(p, axis=1, keepdims=True)
        logits = unit @ unit.T / self.temperature
        np.fill_diagonal(logits, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        entropy = -(weights * np.log(np.where(weights > 0, weights, 1.0))).sum(axis=1)
        return float(entropy.mean() / np.log(n - 1))


class DeepEmbeddedValidation(SelectionScore):
    """Deep embedded validation (DEV, You et al., 2019): lower is better.

    The model's loss on the source site's labelled validation patients, each weighted by
    how much more likely its features are at the target site than at the source (a domain
    classifier's density ratio), with the paper's control variate to reduce variance. It
    estimates the model's loss at the target site without target labels, under the
    assumption that the sites differ in which patients they see, not in what a patient's
    features mean. Needs the source site's profile.
    """

    name = "dev"
    higher_is_better = False
    needs_source_data = True

    def score(
        self,
        probabilities: np.ndarray,
        features: np.ndarray | None = None,
        source: SourceValidation | None = None,
    ) -> float:
        """The control-variate estimate of the target risk (cross-entropy, nats).

        Example:
            >>> rng = np.random.default_rng(0)
            >>> f = rng.normal(size=(40, 3))
            >>> good = SourceValidation(np.tile([0.9, 0.1], (40, 1)), f, np.zeros(40, int))
            >>> bad = SourceValidation(np.tile([0.1, 0.9], (40, 1)), f, np.zeros(40, int))
            >>> dev = DeepEmbeddedValidation()
            >>> t = np.tile([0.5, 0.5], (40, 1))
            >>> dev.score(t, f, source=good) < dev.score(t, f, source=bad)
            True
        """
        check_probabilities(probabilities)
        if features is None or source is None:
            raise ValueError("DEV needs target features and the source validation predictions")
        p = check_probabilities(source.probabilities)
        labels = np.asarray(source.labels, dtype=int)
        losses = -np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))
        weights = density_ratio(np.asarray(source.features), np.asarray(features))
        weighted = weights * losses
        variance = float(np.var(weights, ddof=1)) if len(weights) > 1 else 0.0
        if variance < 1e-12:
            return float(weighted.mean())
        eta = -float(np.cov(weighted, weights, ddof=1)[0, 1]) / variance
        return float(weighted.mean() + eta * weights.mean() - eta)


def density_ratio(source: np.ndarray, target: np.ndarray, folds: int = 5) -> np.ndarray:
    """p_target(x) / p_source(x) at each source sample, from a domain classifier.

    A regularised logistic regression tells the sites apart on the features' leading
    principal components (at most 16: a validation split has tens of patients, and a
    classifier on hundreds of dimensions would separate them perfectly and give extreme
    weights). Each source sample's probability comes from a model that did not see it
    (cross-fitting). Weights are clipped to [0.01, 100].
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([source, target])
    domain = np.r_[np.zeros(len(source)), np.ones(len(target))]
    folds = max(2, min(folds, len(source), len(target)))
    components = max(1, min(16, x.shape[1], len(x) // folds - 1))
    classifier = make_pipeline(
        StandardScaler(),
        PCA(n_components=components, random_state=0),
        LogisticRegression(C=0.1, max_iter=1000),
    )
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    p_target = cross_val_predict(classifier, x, domain, cv=split, method="predict_proba")[
        : len(source), 1
    ]
    p_target = np.clip(p_target, 1e-6, 1 - 1e-6)
    ratio = len(source) / len(target) * p_target / (1 - p_target)
    return np.clip(ratio, 0.01, 100.0)


@hookimpl
def medadapt_selection_scores() -> Sequence[type[SelectionScore]]:
    return [Entropy, InformationMaximization, SoftNeighborhoodDensity, DeepEmbeddedValidation]
