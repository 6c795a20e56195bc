"""The numbers of the validation report, each with a patient-level confidence interval.

Point estimates come from scikit-learn. Intervals come from a bootstrap over **patients**,
not samples: a patient's lesions are not independent of each other, and resampling them one
by one would make the intervals too narrow. Every statistic of one report is computed on the
same resamples (the same seed), so the difference between two models is a paired bootstrap.

A statistic that cannot be computed on a resample (AUROC when the resample holds one class)
skips it; the share of skipped resamples is kept, and an interval computed from fewer than
half of them is not given (None) rather than given from a biased remainder.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# SciPy's and scikit-learn's modules are imported where they are used: the decision-rule
# plugins import this module when any command starts (``medadapt --help`` too), and the two
# cost about a second of imports that most commands never use.

#: Resamples per interval. 2,000 keeps the bounds of a 95% interval stable to about 0.005
#: AUROC for the test splits of a few dozen patients the report is meant for.
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A number with its confidence interval; None where it cannot be measured."""

    value: float | None
    low: float | None = None
    high: float | None = None
    #: How many observations it rests on (samples, or patients for patient counts).
    n: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; None when ``labels`` hold one class only."""
    from sklearn.metrics import roc_auc_score

    if 0 < labels.sum() < len(labels):
        return float(roc_auc_score(labels, scores))
    return None


def rank_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The same AUROC from ranks (Mann-Whitney U, ties counted half), without scikit-learn's
    input checks, which cost milliseconds a call: for the thousands of bootstrap resamples.

    Example:
        >>> rank_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8]))
        0.875
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    import scipy.stats

    ranks = scipy.stats.rankdata(scores)
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def resampled_auroc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUROC of every bootstrap resample at once, NaN where a resample holds one class.

    ``weights`` (resamples, samples) says how often each sample is drawn in each resample
    (:meth:`PatientBootstrap.weights`). A resample's AUROC is the Mann-Whitney statistic of
    its drawn samples, each counted as often as it is drawn: for every drawn positive, the
    drawn negatives scored below it, ties counted half, over all (positive, negative)
    pairs. That is :func:`rank_auroc` of the resampled samples, in time and memory linear
    in the samples, from one sort instead of one ranking per resample.

    Example:
        >>> labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8])
        >>> resampled_auroc(labels, scores, np.array([[1, 1, 1, 1], [2, 0, 1, 1], [1, 1, 0, 0]]))
        array([0.875, 1.   ,   nan])
    """
    import scipy.sparse

    positive = labels == 1
    _, level = np.unique(scores, return_inverse=True)
    level = level.ravel()
    samples, levels = len(scores), int(level.max()) + 1 if len(scores) else 0
    # Which score level each sample has, to add up the drawn negatives per level.
    at_level = scipy.sparse.csr_matrix(
        (np.ones(samples), (level, np.arange(samples))), shape=(levels, samples)
    )
    result = np.empty(len(weights))
    for start in range(0, len(weights), 256):  # bounded memory for large validation sets
        drawn = weights[start : start + 256].astype(float)
        negatives = drawn * ~positive
        per_level = np.asarray(at_level @ negatives.T).T
        credit = np.cumsum(per_level, axis=1) - 0.5 * per_level  # below + half the ties
        ranked = (drawn[:, positive] * credit[:, level[positive]]).sum(axis=1)
        pairs = drawn[:, positive].sum(axis=1) * negatives.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[start : start + 256] = np.where(pairs > 0, ranked / pairs, np.nan)
    return result


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Sensitivity, specificity, PPV and NPV when ``scores >= threshold`` means positive.

    A rate whose denominator is empty (no positive patient, no positive call) is None.
    """
    called = scores >= threshold
    tp = int(np.sum(called & (labels == 1)))
    fp = int(np.sum(called & (labels == 0)))
    fn = int(np.sum(~called & (labels == 1)))
    tn = int(np.sum(~called & (labels == 0)))

    def share(part: int, whole: int) -> float | None:
        return part / whole if whole else None

    return {
        "sensitivity": share(tp, tp + fn),
        "specificity": share(tn, tn + fp),
        "ppv": share(tp, tp + fp),
        "npv": share(tn, tn + fn),
    }


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """The confusion matrix at ``threshold`` as named counts (scikit-learn's)."""
    from sklearn.metrics import confusion_matrix

    tn, fp, fn, tp = confusion_matrix(labels, scores >= threshold, labels=[0, 1]).ravel()
    return {
        "true_positive": int(tp),
        "false_positive": int(fp),
        "false_negative": int(fn),
        "true_negative": int(tn),
    }


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """ECE: the sample-weighted mean gap between predicted probability and observed rate.

    Equal-width bins over [0, 1] of the positive-class probability (the reliability
    diagram's bins); a bin without samples counts for nothing.

    Example:
        >>> expected_calibration_error(np.array([0, 1, 1, 0]), np.array([0.0, 1.0, 1.0, 0.0]))
        0.0
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(scores[inside].mean() - labels[inside].mean())
    return float(total / max(len(scores), 1))


def reliability(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Per bin: its range, how many samples, mean predicted probability, observed rate."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": int(inside.sum()),
                "predicted": float(scores[inside].mean()) if inside.any() else None,
                "observed": float(labels[inside].mean()) if inside.any() else None,
            }
        )
    return table


def roc_points(labels: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (scikit-learn's), for the figure and the JSON."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    return {
        "false_positive_rate": [float(v) for v in fpr],
        "true_positive_rate": [float(v) for v in tpr],
        "threshold": [float(min(v, 1.0)) for v in thresholds],
    }


def operating_threshold(
    labels: np.ndarray, scores: np.ndarray, rule: str, target: float | None
) -> float:
    """The decision threshold chosen on (validation) predictions by a stated rule.

    Rules:
        ``min_sensitivity``: the highest threshold whose sensitivity is at least ``target``
            (so the most specific among those that find enough positives);
        ``min_specificity``: the lowest threshold whose specificity is at least ``target``;
        ``youden``: the threshold maximising sensitivity + specificity - 1.

    Example:
        >>> labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9])
        >>> operating_threshold(labels, scores, "min_sensitivity", 1.0)
        0.4
        >>> operating_threshold(labels, scores, "min_specificity", 1.0)
        0.9
    """
    if not 0 < labels.sum() < len(labels):
        raise ValueError("an operating point needs both classes in the validation split")
    candidates = np.unique(scores)[::-1]  # highest first
    sensitivity = np.array([np.mean(scores[labels == 1] >= t) for t in candidates])
    specificity = np.array([np.mean(scores[labels == 0] < t) for t in candidates])
    if rule == "min_sensitivity":
        assert target is not None
        return float(candidates[np.argmax(sensitivity >= target)])
    if rule == "min_specificity":
        assert target is not None
        meets = np.nonzero(specificity >= target)[0]
        return float(candidates[meets[-1]] if len(meets) else candidates[0] + 1e-9)
    if rule == "youden":
        return float(candidates[int(np.argmax(sensitivity + specificity))])
    raise ValueError(f"unknown operating-point rule {rule!r}")


def fit_temperature(labels: np.ndarray, scores: np.ndarray) -> float:
    """The temperature T that makes ``sigmoid(logit(p) / T)`` best calibrated (log loss).

    Fitted on validation predictions by a bounded one-dimensional search; T > 1 softens
    over-confident predictions, T < 1 sharpens timid ones. Ranking, and so AUROC, is
    unchanged.
    """
    from scipy.optimize import minimize_scalar

    logits = _logit(scores)

    def loss(log_t: float) -> float:
        p = np.clip(_sigmoid(logits / np.exp(log_t)), 1e-7, 1 - 1e-7)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    return float(np.exp(minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded").x))


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Positive-class probabilities rescaled by a fitted temperature."""
    return _sigmoid(_logit(scores) / temperature)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return np.asarray(expit(x))


class PatientBootstrap:
    """Confidence intervals by resampling patients with replacement.

    Args:
        patients: the patient of each sample (pseudonyms), in the order of the samples.
        level: the confidence level (0.95 for a 95% interval).
        resamples: how many bootstrap resamples.
        seed: fixes the resamples, so every statistic (and both models of a paired
            comparison) sees the same ones.

    Example:
        >>> boot = PatientBootstrap(["a", "a", "b", "c"], resamples=200, seed=0)
        >>> e = boot.estimate(lambda idx: float(np.mean(np.array([1, 1, 0, 0])[idx])))
        >>> e.value, e.low <= e.value <= e.high
        (0.5, True)
    """

    def __init__(
        self,
        patients: Sequence[str],
        level: float = 0.95,
        resamples: int = BOOTSTRAP_RESAMPLES,
        seed: int = 0,
    ) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, patient in enumerate(patients):
            groups[patient].append(index)
        self.groups = [np.array(v) for _, v in sorted(groups.items())]
        self.level = level
        self.resamples = resamples
        self.seed = seed
        self._indices: list[np.ndarray] | None = None
        self._weights: np.ndarray | None = None

    @property
    def patients(self) -> int:
        return len(self.groups)

    def indices(self) -> list[np.ndarray]:
        """The sample indices of every resample (the same for every call)."""
        if self._indices is None:
            draws = self._draws()
            self._indices = [
                np.concatenate([self.groups[p] for p in draw]).astype(np.int32) for draw in draws
            ]
        return self._indices

    def _draws(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, len(self.groups), size=(self.resamples, len(self.groups)))

    def weights(self) -> np.ndarray:
        """How often each sample is drawn in each resample (resamples, samples): the same
        resamples as :meth:`indices`, as counts, for statistics computed on all resamples
        at once (:func:`resampled_auroc`)."""
        if self._weights is not None:
            return self._weights
        samples = sum(len(g) for g in self.groups)
        draws = self._draws()
        per_patient = np.zeros((self.resamples, len(self.groups)), dtype=np.int32)
        rows = np.repeat(np.arange(self.resamples), draws.shape[1])
        np.add.at(per_patient, (rows, draws.ravel()), 1)
        counts = np.zeros((self.resamples, samples), dtype=np.int32)
        for patient, group in enumerate(self.groups):
            counts[:, group] = per_patient[:, [patient]]
        self._weights = counts
        return counts

    def interval(self, value: float | None, values: np.ndarray) -> Estimate:
        """``value`` with the percentile interval of a statistic's ``values`` over the
        resamples (NaN where undefined), as :meth:`estimate` gives it."""
        n = sum(len(g) for g in self.groups)
        if value is None:
            return Estimate(None, n=n)
        defined = values[~np.isnan(values)]
        if len(defined) < self.resamples / 2:
            return Estimate(value, n=n)
        tail = (1.0 - self.level) / 2 * 100
        low, high = np.percentile(defined, [tail, 100 - tail])
        return Estimate(value, float(low), float(high), n=n)

    def estimate(
        self, statistic: Callable[[np.ndarray], float | None], value: float | None = None
    ) -> Estimate:
        """``statistic`` on all samples, with its percentile interval over the resamples.

        ``statistic`` takes an array of sample indices and returns a number, or None where
        it is undefined on those samples. ``value``, when given, is the point estimate
        (computed by a reference implementation); otherwise ``statistic`` of all samples.
        """
        everything = np.concatenate(self.groups) if self.groups else np.array([], dtype=int)
        if value is None:
            value = statistic(np.sort(everything))
        if value is None:
            return Estimate(None, n=len(everything))
        values = [np.nan if (v := statistic(idx)) is None else v for idx in self.indices()]
        return self.interval(value, np.array(values, dtype=float))
