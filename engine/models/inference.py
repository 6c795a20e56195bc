"""One way to run a model over data: every prediction medadapt makes goes through
:func:`infer`: training's validation at each epoch (engine/training/loop.py), adaptation's
candidates (engine/adaptation/runs.py), evaluation (engine/validation/evaluate.py) and the
shift analysis's features (engine/shift.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from medadapt.engine.contracts.errors import InvalidInputError

#: The batch size of inference outside the training loop.
BATCH_SIZE = 64


def compute_device(name: str) -> torch.device:
    """The device a setting names (``training.device``, ``--device``): ``auto`` is a CUDA
    GPU when PyTorch sees one, else the CPU.

    Raises:
        InvalidInputError: the named device is not on this machine.
    """
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidInputError(
                "the device is mps (training.device or --device), but PyTorch sees no Apple "
                "GPU here: choose --device cpu"
            )
        return torch.device("mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            "the device is cuda (training.device or --device), but PyTorch sees no GPU here: "
            "choose --device cpu"
        )
    if name in ("auto", "cuda"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


@dataclass(frozen=True)
class Inferred:
    """What :func:`infer` measured, one row per sample in the data's order.

    Attributes:
        probabilities: (samples, classes) softmax probabilities; None when not asked for.
        features: (samples, feature_dim) feature vectors; None when not asked for.
        labels: the labels the batches carried (class indices, ``-1`` where unlabelled).
    """

    probabilities: np.ndarray | None
    features: np.ndarray | None
    labels: np.ndarray


def batches(data: Dataset, batch_size: int = BATCH_SIZE) -> DataLoader:
    """``data`` in order, in batches, in this process: how inference reads a dataset."""
    return DataLoader(data, batch_size=batch_size)


@torch.no_grad()
def infer(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    probabilities: bool = True,
    features: bool = False,
    prepare: Callable[[Tensor], Tensor] = lambda patches: patches,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> Inferred:
    """Run ``model`` (in evaluation mode) over ``loader``'s (patches, labels) batches.

    Args:
        model: a classifier with ``features`` and ``head``.
        loader: the batches, in the order the rows are wanted.
        probabilities: measure the class probabilities (softmax of the logits, in float32).
        features: keep the feature vectors too (flattened, float32).
        prepare: moves a batch of patches where the model is (a device, a memory format).
        autocast: the mixed-precision context each batch runs in (none by default).
    """
    model.eval()
    kept_probabilities, kept_features, labels = [], [], []
    for patches, target in loader:
        with autocast():
            inputs = prepare(patches)
            if features:
                feature = model.features(inputs)
                kept_features.append(feature.float().flatten(1).cpu())
                logits = model.head(feature).float() if probabilities else None
            else:
                logits = model(inputs).float() if probabilities else None
        if logits is not None:
            kept_probabilities.append(logits.softmax(dim=1).cpu())
        labels.append(target)
    return Inferred(
        torch.cat(kept_probabilities).numpy() if kept_probabilities else None,
        torch.cat(kept_features).numpy() if kept_features else None,
        torch.cat(labels).numpy() if labels else np.empty(0, dtype=np.int64),
    )
