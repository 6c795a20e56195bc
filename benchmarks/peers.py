"""SKADA, the scikit-learn-compatible domain-adaptation package, on medadapt's data.

SKADA (https://scikit-adaptation.github.io) is an optional benchmark dependency (the
``bench`` extra), never a runtime one. Its deep methods are skorch networks around a
PyTorch module; here the module is the same ResNet-18 classifier medadapt adapts,
starting from the same trained source weights, fed the same preprocessed patches (the
source site's training split with labels, the target's training split without), for the
same number of epochs, with the same optimiser, learning rate, weight decay, cosine
schedule and batch size. What SKADA does not get: medadapt's augmentations, its
label-free choice of the best epoch (SKADA keeps the last), and its batch-norm statistics
pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: The SKADA methods compared, by the name the tables show; DANN and DeepCoral are named by
#: the issue, the others are candidates for "its best other method". "DANN" is SKADA's DANN
#: as shipped, whose default domain classifier does not train the encoder (see
#: :func:`shipped_discriminator_check`); :data:`WORKING_DANN` is the same method with the same
#: classifier ending in a sigmoid.
WORKING_DANN = "DANN, sigmoid discriminator"
METHODS = ["DANN", WORKING_DANN, "DeepCoral", "DAN", "MCC", "DeepJDOT"]
#: Where SKADA's results are kept between runs (see :func:`run_skada_cached`).
CACHE = Path(__file__).resolve().parent.parent / "build" / "bench-peers"
#: The layer whose output SKADA aligns: the classifier's feature vector (after pooling).
FEATURES = "classifier.features"


@dataclass
class PeerRun:
    """One SKADA method's result on one seed."""

    method: str
    probabilities: np.ndarray
    seconds: float
    epochs: int

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs


class _Module(nn.Module):
    """medadapt's classifier as SKADA calls it (with a ``sample_weight`` argument)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, X: torch.Tensor, sample_weight: Any = None) -> torch.Tensor:
        return self.classifier(X)


def arrays(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every (patch, label) of a medadapt dataset, stacked: float32 patches, int labels."""
    patches, labels = [], []
    for x, y in DataLoader(data, batch_size=64):
        patches.append(x.numpy())
        labels.append(np.asarray(y))
    return np.concatenate(patches).astype(np.float32), np.concatenate(labels).astype(np.int64)


def run_skada(
    method: str,
    classifier: nn.Module,
    source: tuple[np.ndarray, np.ndarray],
    target: np.ndarray,
    test: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> PeerRun:
    """Adapt a copy of ``classifier`` with one SKADA method; its probabilities on ``test``."""
    import skada.deep
    from skorch.callbacks import LRScheduler
    from torch.optim.lr_scheduler import CosineAnnealingLR

    source_x, source_y = source
    if min(len(source_x), len(target)) < batch_size:
        # SKADA's domain-balanced loader drops each domain's incomplete batch: with fewer
        # samples than one batch it would train on nothing and say nothing.
        raise ValueError(
            f"SKADA needs at least one batch ({batch_size}) of source and of target samples; "
            f"got {len(source_x)} and {len(target)}"
        )
    torch.manual_seed(seed)
    np.random.seed(seed)
    module = _Module(copy.deepcopy(classifier))
    features = classifier.head.in_features
    options: dict[str, Any] = {
        "layer_name": FEATURES,
        "batch_size": batch_size,
        "max_epochs": epochs,
        "train_split": None,
        "optimizer": torch.optim.AdamW,
        "optimizer__lr": lr,
        "optimizer__weight_decay": weight_decay,
        "callbacks": [("cosine", LRScheduler(CosineAnnealingLR, T_max=epochs))],
        "device": "cpu",
        "verbose": 0,
    }
    if method == "DANN":
        options["num_features"] = features
    elif method == WORKING_DANN:
        options["domain_classifier"] = sigmoid_discriminator(features)
    net = getattr(skada.deep, method.split(",")[0])(module, **options)
    x = np.concatenate([source_x, target])
    y = np.concatenate([source_y, np.full(len(target), -1)])
    domain = np.concatenate([np.ones(len(source_x)), np.full(len(target), -2)]).astype(np.int64)
    start = time.perf_counter()
    net.fit(x, y, sample_domain=domain)
    seconds = time.perf_counter() - start
    scores = net.predict_proba(test, sample_domain=np.full(len(test), -2, dtype=np.int64))
    probabilities = torch.as_tensor(np.asarray(scores)).float()
    if not torch.allclose(probabilities.sum(dim=1), torch.ones(len(test)), atol=1e-4):
        probabilities = probabilities.softmax(dim=1)  # logits, not probabilities
    return PeerRun(method, probabilities.numpy(), seconds, len(net.history_))


def sigmoid_discriminator(features: int) -> nn.Module:
    """SKADA's DANN domain classifier with a sigmoid in place of its final softmax.

    The shipped one (``skada.deep.modules.DomainClassifier``) ends in ``Linear(100, 1)`` and
    ``nn.Softmax()``: a softmax over one output is 1 whatever its input, so the BCE domain
    loss is constant and no gradient reaches the encoder. A sigmoid of the same output is
    the probability DANN's paper trains with BCE.
    """
    from skada.deep.modules import DomainClassifier

    classifier = DomainClassifier(num_features=features)
    classifier.classifier[-1] = nn.Sigmoid()
    return classifier


def shipped_discriminator_check(features: int = 512, samples: int = 32) -> dict[str, float]:
    """What SKADA's default DANN domain classifier gives on random features, measured:
    the range of its outputs, its BCE loss against half source and half target labels, and
    the largest gradient that loss sends back to the features; and the same for
    :func:`sigmoid_discriminator`."""
    from skada.deep.modules import DomainClassifier

    torch.manual_seed(0)
    measured: dict[str, float] = {}
    domains = torch.cat([torch.ones(samples // 2), torch.zeros(samples - samples // 2)])
    for name, classifier in (
        ("shipped", DomainClassifier(num_features=features)),
        ("sigmoid", sigmoid_discriminator(features)),
    ):
        x = torch.randn(samples, features, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the shipped softmax's "implicit dimension"
            out = classifier(x)
        loss = nn.functional.binary_cross_entropy(out, domains)
        loss.backward()
        assert x.grad is not None
        measured[f"{name} output min"] = float(out.detach().min())
        measured[f"{name} output max"] = float(out.detach().max())
        measured[f"{name} loss"] = float(loss)
        measured[f"{name} gradient"] = float(x.grad.abs().max())
    return measured


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run_key(
    method: str,
    classifier: nn.Module,
    source: tuple[np.ndarray, np.ndarray],
    target: np.ndarray,
    test: np.ndarray,
    settings: dict[str, Any],
    machine: dict[str, Any],
) -> str:
    """What a SKADA run's result depends on, as one key: SKADA's and PyTorch's versions,
    the method, the source model's weights, the data (source, target and test patches), the
    settings and the machine (its seconds are kept too)."""
    import skada

    weights = [t.detach().cpu().numpy() for t in classifier.state_dict().values()]
    parts = {
        "skada": skada.__version__,
        "torch": torch.__version__,
        "method": method,
        "weights": _digest(*weights),
        "data": _digest(*source, target, test),
        "settings": settings,
        "machine": machine,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_skada_cached(
    cache: Path,
    method: str,
    classifier: nn.Module,
    source: tuple[np.ndarray, np.ndarray],
    target: np.ndarray,
    test: np.ndarray,
    machine: dict[str, Any],
    **settings: Any,
) -> tuple[PeerRun, bool]:
    """:func:`run_skada`, or its result kept in ``cache`` by a run with the same key
    (:func:`run_key`): the peers' runs do not depend on medadapt's code, so a rerun at a new
    commit measures SKADA again only where its inputs changed. Returns the run and whether
    it was reused."""
    key = run_key(method, classifier, source, target, test, settings, machine)
    path = cache / f"{key}.npz"
    if path.is_file():
        with np.load(path) as kept:
            run = PeerRun(
                method, kept["probabilities"], float(kept["seconds"]), int(kept["epochs"])
            )
        return run, True
    run = run_skada(method, classifier, source, target, test, **settings)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, probabilities=run.probabilities, seconds=run.seconds, epochs=run.epochs)
    partial.replace(path)
    return run, False


def run_skada_like(
    cache: Path,
    method: str,
    classifier: nn.Module,
    data: tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray],
    training: Any,
    machine: dict[str, Any],
    epochs: int,
    seed: int,
) -> tuple[PeerRun, bool]:
    """:func:`run_skada_cached` on ``data`` (the labelled source, the target and the test
    images) with the batch size, learning rate and weight decay of a medadapt profile's
    ``training`` settings, as every comparison with medadapt runs it."""
    source, target, test = data
    return run_skada_cached(
        cache,
        method,
        classifier,
        source,
        target,
        test,
        machine,
        epochs=epochs,
        batch_size=training.batch_size,
        lr=training.optimizer.lr,
        weight_decay=training.optimizer.weight_decay,
        seed=seed,
    )


def epoch_times(
    classifier: nn.Module,
    source: tuple[np.ndarray, np.ndarray],
    target: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    folder: Any,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    repeats: int,
) -> list[dict[str, Any]]:
    """DANN's time per epoch, like for like: medadapt's and SKADA's, taking turns.

    Both train on the same in-memory patches without augmentation, from the same source
    model, with the same optimiser and batch size. medadapt's epoch is timed whole (its
    steps, the batch-norm pass and the validation it uses to choose an epoch) and for its
    steps alone; SKADA's epoch is its steps. Epochs differ in length (medadapt's DANN
    visits the target's full batches once, with a source batch each step; SKADA draws as
    many pairs as the larger site has full batches), so milliseconds per training sample
    compare the steps.
    """
    from torch.utils.data import TensorDataset

    from medadapt.engine import ComponentKind, RunInfo, get_plugin_host
    from medadapt.engine.adaptation import run_method
    from medadapt.engine.profile import Training
    from medadapt.engine.training.distributed import World
    from medadapt.engine.training.loop import steps_per_epoch

    host = get_plugin_host()
    training = Training.model_validate(
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "early_stopping_patience": None,
            "optimizer": {"lr": lr, "weight_decay": weight_decay},
            "device": "cpu",
        }
    )
    source_x, source_y = source
    source_data = TensorDataset(torch.from_numpy(source_x), torch.from_numpy(source_y))
    target_data = TensorDataset(torch.from_numpy(target), torch.full((len(target),), -1))
    validation_data = TensorDataset(*(torch.from_numpy(a) for a in validation))
    # The samples medadapt's DANN trains on in an epoch: its target batches (the last
    # incomplete one left out, as SKADA does, since 1adbb50) and a source batch each step.
    dann = host.registry().get(ComponentKind.ADAPTATION_METHODS, "dann")
    steps = steps_per_epoch(len(target), batch_size, dann.drop_incomplete_batch)
    target_samples = min(len(target), steps * batch_size)
    medadapt_samples = target_samples + steps * min(batch_size, len(source_x))
    full = max(len(source_x) // batch_size, len(target) // batch_size) * batch_size
    skada_samples = 2 * full
    rows: list[dict[str, Any]] = []
    for repeat in range(repeats):
        model = copy.deepcopy(classifier)
        method = host.registry().create(ComponentKind.ADAPTATION_METHODS, "dann")
        out = folder / f"medadapt-{repeat}"
        fit = run_method(
            model,
            method,
            target_data,
            validation_data,
            training,
            RunInfo("adapt", "timing", out, repeat),
            World(0, 1, torch.device("cpu")),
            host,
            positive_index=1,
            source_train=source_data,
        )
        whole = float(np.mean([e["seconds"] for e in fit.history]))
        steps_only = float(np.mean([e["train_seconds"] for e in fit.history]))
        peer = run_skada(
            "DANN",
            classifier,
            source,
            target,
            validation[0],
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=repeat,
        )
        rows += [
            {
                "repeat": repeat,
                "run": "medadapt DANN, whole epoch",
                "seconds_per_epoch": whole,
                "samples_per_epoch": medadapt_samples,
            },
            {
                "repeat": repeat,
                "run": "medadapt DANN, training steps",
                "seconds_per_epoch": steps_only,
                "samples_per_epoch": medadapt_samples,
            },
            {
                "repeat": repeat,
                "run": "SKADA DANN",
                "seconds_per_epoch": peer.seconds_per_epoch,
                "samples_per_epoch": skada_samples,
            },
        ]
    return rows
