"""Batch-norm statistics are recomputed exactly after each epoch (engine/batchnorm.py)."""

from __future__ import annotations

import torch
from torch import nn

from medadapt.engine.batchnorm import batch_norm_layers, recompute_batch_norm


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(3, 2, 1)
    )


def test_the_statistics_are_the_average_over_the_batches():
    net = _net()
    batches = [torch.randn(8, 1, 10, 10) * 0.01 + k for k in range(3)]
    assert recompute_batch_norm(net, batches) == 3
    with torch.no_grad():
        outputs = [net[0](batch) for batch in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert net[1].momentum == 0.1


def test_modes_weights_and_skipped_layers_are_left_as_they_were():
    net = _net()
    net.train()
    net[3].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    used = recompute_batch_norm(
        net, [(torch.randn(4, 1, 6, 6), torch.zeros(4))] * 5, max_batches=2, skip=[net[1]]
    )
    assert used == 0  # the only batch-norm layer is skipped: nothing to do
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert net.training
    assert not net[3].training
    assert batch_norm_layers(net) == [net[1]]
    assert recompute_batch_norm(net, [torch.randn(4, 1, 6, 6)] * 5, max_batches=2) == 2
    assert int(net[1].num_batches_tracked) == 2
    assert net.training
    assert not net[3].training
    torch.testing.assert_close(net[0].weight, before["0.weight"])


def test_no_batches_keeps_the_statistics():
    net = _net()
    net[1].running_mean.fill_(3.0)
    assert recompute_batch_norm(net, []) == 0
    assert torch.all(net[1].running_mean == 3.0)
