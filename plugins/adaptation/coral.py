"""Deep CORAL: align the feature covariances of the two sites (Sun and Saenko, 2016)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from medadapt.engine import FeatureAlignment


def coral_distance(source: Tensor, target: Tensor) -> Tensor:
    """Squared Frobenius distance between the feature covariances, over 4 d^2."""
    d = source.shape[1]

    def covariance(x: Tensor) -> Tensor:
        centred = x - x.mean(dim=0, keepdim=True)
        return centred.T @ centred / max(x.shape[0] - 1, 1)

    return ((covariance(source.float()) - covariance(target.float())) ** 2).sum() / (4 * d * d)


class Coral(FeatureAlignment):
    """Learns the source task while making target features vary as source features do.

    Needs labelled source data; the target site's labels are not used.
    """

    name = "coral"
    term = "coral"
    #: Chosen on the development seeds for speed (docs/adaptation.md, benchmarks/method_study.py).
    drop_incomplete_batch: ClassVar[bool] = True

    def distance(self, source: Tensor, target: Tensor) -> Tensor:
        return coral_distance(source, target)
