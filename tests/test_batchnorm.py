"""Batch-norm statistics are recomputed exactly after an epoch too short for the running
averages (engine/training/batchnorm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.models.model import Classifier
from medadapt.engine.profile import Training
from medadapt.engine.training import loop
from medadapt.engine.training.batchnorm import (
    batch_norm_layers,
    recompute_batch_norm,
    stale_fraction,
)
from medadapt.engine.training.distributed import World
from medadapt.engine.training.loop import Trainer
from medadapt.engine.training.objective import EpochJudge, Supervised


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


class _Counted(TensorDataset):
    """Counts the samples read."""

    reads = 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        self.reads += 1
        return super().__getitem__(index)


def _fit(
    tmp_path: Path, n: int, batch_size: int, pass_: str, **training: object
) -> tuple[nn.Module, int]:
    """A tiny network trained two epochs, and how many samples it read."""
    torch.manual_seed(0)
    model = Classifier(
        nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        ),
        4,
        2,
    )
    data = _Counted(torch.randn(n, 1, 8, 8), torch.arange(n) % 2)
    settings = Training.model_validate(
        {"epochs": 2, "batch_size": batch_size, "early_stopping_patience": None, **training}
    )
    tmp_path.mkdir()
    world = World(0, 1, torch.device("cpu"))
    run = RunInfo("train", "test", tmp_path, 0)
    Trainer(
        model,
        data,
        data,
        settings,
        run,
        world,
        get_plugin_host(),
        Supervised(EpochJudge(positive_index=1)),
        quiet=True,
        batch_norm_pass=pass_,
    ).fit()
    return model, data.reads


def _fit_counts(tmp_path: Path, n: int, batch_size: int, pass_: str = "when-stale") -> set[int]:
    """The num_batches_tracked of the trained network's layers at the end."""
    model, _ = _fit(tmp_path, n, batch_size, pass_)
    return {int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}


@pytest.mark.slow
def test_the_pass_after_an_epoch_reuses_its_batches_with_the_same_result(tmp_path, monkeypatch):
    # The pass uses the first 2 of the epoch's 4 shuffled batches, so the same statistics
    # need the same batches in the same order, whether kept or read again.
    kept, kept_reads = _fit(tmp_path / "kept", 32, 8, "always", batch_norm_batches=2)
    monkeypatch.setattr(loop, "KEPT_BATCH_BYTES", 0)  # too little memory to keep a batch
    read, reads = _fit(tmp_path / "read", 32, 8, "always", batch_norm_batches=2)
    for key, value in kept.state_dict().items():
        torch.testing.assert_close(value, read.state_dict()[key], rtol=0, atol=0, msg=key)
    # Kept, each epoch reads its 32 training and 32 validation samples once; read again,
    # the pass reads its batches a second time.
    assert kept_reads == 2 * 64 < reads


@pytest.mark.slow
def test_training_recomputes_statistics_only_when_an_epoch_is_too_short(tmp_path):
    # 4 steps an epoch leave 0.9 ** 4 = 66% of the starting statistics: recomputed over
    # the epoch's 4 batches. 64 steps leave 0.1%: PyTorch's running averages are kept
    # (2 epochs x 64 steps counted).
    assert _fit_counts(tmp_path / "short", n=32, batch_size=8) == {4}
    assert _fit_counts(tmp_path / "long", n=256, batch_size=4) == {128}
    assert _fit_counts(tmp_path / "always", n=256, batch_size=4, pass_="always") == {50}


@pytest.mark.slow
def test_an_epoch_after_which_no_pass_runs_keeps_no_batch(tmp_path, monkeypatch):
    kept: list[object] = []
    original = loop.Trainer._train_epoch

    def recording(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        kept.append(result[2])
        return result

    monkeypatch.setattr(loop.Trainer, "_train_epoch", recording)
    _fit(tmp_path / "long", n=256, batch_size=4, pass_="when-stale")  # 64 steps: no pass
    assert kept == [None, None]
    kept.clear()
    _fit(tmp_path / "short", n=32, batch_size=8, pass_="when-stale")  # 4 steps: a pass
    assert [len(batches) for batches in kept] == [4, 4]


def test_stale_fraction_ignores_frozen_layers_and_counts_cumulative_averages_as_stale():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm2d(2))
    assert stale_fraction(net, 44) < 0.01
    net[1].momentum = None
    assert stale_fraction(net, 1000) == 1.0
    assert stale_fraction(net, 1000, skip=[net[1]]) < 0.01
    assert stale_fraction(nn.Linear(2, 2), 0) == 0.0
