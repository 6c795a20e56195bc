"""Batch-norm statistics measured exactly, rather than trusted from a running average.

A batch-norm layer keeps running estimates of its inputs' mean and variance, updated with
momentum 0.1 from a starting variance of 1. On a small data set an epoch is a handful of
steps, so after a few epochs the running variance is still mostly its starting value, and
the model in evaluation mode sees inputs scaled very differently from what it was trained
on: its predictions collapse to one class. A narrow HU window (most of the patch clipped to
one value) makes the gap largest. Recomputing the statistics with the weights fixed, as an
average over real batches ("precise batch norm", Wu and Johnson, 2021), removes the gap.

The pass costs up to one forward pass over the training data, so training runs it only
when it matters: when an epoch took too few steps for the running averages to forget what
they held before it (:func:`stale_fraction` above 1%: fewer than 44 steps at the default
momentum 0.1). Larger data sets keep PyTorch's running averages, which then describe the
epoch's own batches.

The same computation on target-site data is AdaBN (Li et al., 2016): the adaptation method
of that name calls :func:`recompute_batch_norm` with unlabelled target batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module, skip: Sequence[nn.Module] = ()) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` that track statistics, outside ``skip``."""
    skipped = {id(layer) for module in skip for layer in module.modules()}
    return [
        layer
        for layer in model.modules()
        if isinstance(layer, _BatchNorm) and layer.track_running_stats and id(layer) not in skipped
    ]


def stale_fraction(model: nn.Module, steps: int, skip: Sequence[nn.Module] = ()) -> float:
    """How much of the batch-norm running averages still comes from before the last ``steps``.

    A layer with momentum m keeps (1 - m) ** steps of what it held before ``steps`` training
    steps; a layer with momentum None (a cumulative average since the start) keeps 1, as
    does a model after zero steps. The result is the largest over the layers outside
    ``skip`` (frozen stages, whose statistics do not move); 0 without any.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> round(stale_fraction(net, 10), 3), stale_fraction(net, 44) < 0.01
        (0.349, True)
    """
    fractions = [
        1.0 if layer.momentum is None else (1.0 - layer.momentum) ** steps
        for layer in batch_norm_layers(model, skip)
    ]
    return max(fractions, default=0.0)


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    batches: Iterable[Tensor],
    max_batches: int | None = None,
    skip: Sequence[nn.Module] = (),
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> int:
    """Replace the batch-norm statistics of ``model`` by their average over ``batches``.

    Only the batch-norm layers run in training mode; everything else (dropout, layers in
    ``skip``) stays in evaluation mode, and no weight changes. The model's modes are
    restored afterwards.

    Args:
        model: the network.
        batches: input patches (tensors), or (patches, labels) pairs whose labels are unused.
        max_batches: stop after this many batches; None uses them all.
        skip: modules whose statistics stay as they are (frozen stages).
        prepare: moves a batch to the model's device and layout.

    Returns:
        The number of batches used; 0 leaves the statistics untouched.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> recompute_batch_norm(net, [torch.full((4, 1, 8, 8), 5.0)])
        1
        >>> float(net[1].running_var.max()) < 1e-3
        True
    """
    layers = batch_norm_layers(model, skip)
    if not layers:
        return 0
    modes = {module: module.training for module in model.modules()}
    saved = [
        (layer.momentum, layer.running_mean.clone(), layer.running_var.clone())  # type: ignore[union-attr]
        for layer in layers
    ]
    used = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over the batches that follow
            layer.train()
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            patches = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(prepare(patches) if prepare else patches)
            used += 1
    finally:
        for layer, (momentum, mean, var) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            if used == 0:
                layer.running_mean.copy_(mean)  # type: ignore[union-attr]
                layer.running_var.copy_(var)  # type: ignore[union-attr]
        for module, training in modes.items():
            module.train(training)
    return used
