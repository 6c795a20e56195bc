"""When the training loop writes its checkpoint: after the first epoch, then at most once per
``CHECKPOINT_SECONDS``, after the last epoch, and when a run is interrupted; and that what
it writes is what an epoch-by-epoch checkpoint held."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.models.model import Classifier
from medadapt.engine.models.weights import torch_load_weights_only
from medadapt.engine.profile import Training
from medadapt.engine.training import checkpoints, loop
from medadapt.engine.training.distributed import World
from medadapt.engine.training.objective import EpochJudge, Supervised

pytestmark = pytest.mark.slow  # each trains a tiny network (a second or two)


def _trainer(out: Path, epochs: int = 4, **options: object) -> loop.Trainer:
    torch.manual_seed(0)
    model = Classifier(
        nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        ),
        4,
        2,
    )
    data = TensorDataset(torch.randn(16, 1, 8, 8), torch.arange(16) % 2)
    settings = Training.model_validate(
        {"epochs": epochs, "batch_size": 8, "early_stopping_patience": None}
    )
    out.mkdir(exist_ok=True)
    return loop.Trainer(
        model,
        data,
        data,
        settings,
        RunInfo("train", "test", out, 0),
        World(0, 1, torch.device("cpu")),
        get_plugin_host(),
        Supervised(EpochJudge(positive_index=1)),
        quiet=True,
        **options,
    )


@pytest.fixture
def written(monkeypatch) -> list[int]:
    """The epoch of every checkpoint written."""
    epochs: list[int] = []
    serialise = checkpoints.torch_bytes

    def counted(payload: dict) -> bytes:
        epochs.append(payload["epoch"])
        return serialise(payload)

    monkeypatch.setattr(checkpoints, "torch_bytes", counted)
    return epochs


def test_a_short_run_writes_its_checkpoint_after_the_first_and_the_last_epoch(tmp_path, written):
    trainer = _trainer(tmp_path / "run")
    fit = trainer.fit()
    assert written == [1, 4]
    # Every epoch's validation predictions, and the best epoch's weights, are on disk.
    predictions = sorted(p.name for p in (tmp_path / "run" / "validation").iterdir())
    assert predictions == [f"epoch-00{n}.npy" for n in (1, 2, 3, 4)]
    assert fit.best_weights.is_file()
    state = torch_load_weights_only(tmp_path / "run" / checkpoints.CHECKPOINT)
    assert state["epoch"] == 4
    assert len(state["history"]) == 4


def test_with_no_interval_every_epoch_writes_its_checkpoint_and_the_weights_are_the_same(
    tmp_path, written
):
    _trainer(tmp_path / "every", checkpoint_seconds=0).fit()
    assert written == [1, 2, 3, 4]
    _trainer(tmp_path / "interval").fit()
    every = load_file(str(tmp_path / "every" / checkpoints.BEST))
    interval = load_file(str(tmp_path / "interval" / checkpoints.BEST))
    for key, value in every.items():
        torch.testing.assert_close(value, interval[key], rtol=0, atol=0, msg=key)
    for epoch in (1, 2, 3, 4):
        name = f"epoch-00{epoch}.npy"
        np.testing.assert_array_equal(
            np.load(tmp_path / "every" / "validation" / name),
            np.load(tmp_path / "interval" / "validation" / name),
        )


def test_an_interrupted_run_writes_the_epochs_it_finished_and_resumes_after_them(
    tmp_path, written, monkeypatch
):
    trainer = _trainer(tmp_path / "run")

    def interrupt_at_third(run: RunInfo, epoch: int, metrics: dict) -> bool:
        if epoch == 3:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(trainer.host, "epoch_end", interrupt_at_third)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    # Epoch 1 was written when it ended; epoch 2 when the run was interrupted.
    assert written == [1, 2]
    state = torch_load_weights_only(tmp_path / "run" / checkpoints.CHECKPOINT)
    assert state["epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "validation").iterdir()) == [
        "epoch-001.npy",
        "epoch-002.npy",
    ]
    monkeypatch.undo()
    resumed = _trainer(tmp_path / "run").fit(resume=True)
    straight = _trainer(tmp_path / "straight").fit()
    assert [e["epoch"] for e in resumed.history] == [1, 2, 3, 4]
    a, b = load_file(str(resumed.best_weights)), load_file(str(straight.best_weights))
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=0, atol=0, msg=key)


def test_a_long_run_writes_a_checkpoint_once_the_interval_has_passed(
    tmp_path, written, monkeypatch
):
    clock = itertools.count(0, 25)  # each call to the clock: 25 s later
    monkeypatch.setattr(checkpoints.time, "monotonic", lambda: float(next(clock)))
    _trainer(tmp_path / "run", epochs=6, checkpoint_seconds=60).fit()
    # Written at 1; the epochs that end at least 60 s of the clock later, and the last.
    assert written[0] == 1
    assert written[-1] == 6
    assert 2 < len(written) < 6
