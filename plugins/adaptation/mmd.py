"""DAN: multi-kernel maximum mean discrepancy between the sites' features (Long et al., 2015)."""

from __future__ import annotations

import torch
from torch import Tensor

from medadapt.engine import FeatureAlignment

#: Bandwidths as multiples of the batch's mean squared distance, as in DAN.
KERNEL_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def multi_kernel_mmd(source: Tensor, target: Tensor) -> Tensor:
    """The squared MMD of two samples under a sum of Gaussian kernels (biased estimate)."""
    joint = torch.cat([source.float(), target.float()])
    distances = torch.cdist(joint, joint) ** 2
    base = distances.detach().sum() / max(joint.shape[0] ** 2 - joint.shape[0], 1)
    base = torch.clamp(base, min=1e-8)
    kernel = sum(torch.exp(-distances / (base * scale)) for scale in KERNEL_SCALES)
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class MMD(FeatureAlignment):
    """Learns the source task while making the two sites' feature distributions match.

    Needs labelled source data; the target site's labels are not used.
    """

    name = "mmd"
    term = "mmd"

    def distance(self, source: Tensor, target: Tensor) -> Tensor:
        return multi_kernel_mmd(source, target)
