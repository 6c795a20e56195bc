"""The engine's training loop, reused by every job that trains: epochs, validation, the best
checkpoint, early stopping, resumable checkpoints, epoch-end hooks, DDP and mixed precision.

What a step computes is a :class:`StepFunction`: plain supervised training by default; an
adaptation method supplies its own. The loop owns everything else.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import Progress
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from medadapt.engine.batchnorm import recompute_batch_norm, stale_fraction
from medadapt.engine.components import SelectionScore, SourceValidation
from medadapt.engine.data import UNLABELLED
from medadapt.engine.distributed import World
from medadapt.engine.errors import InvalidInputError
from medadapt.engine.hookspecs import RunInfo
from medadapt.engine.model import save_weights, state_to_cpu
from medadapt.engine.plugins import PluginHost
from medadapt.engine.profile import Training
from medadapt.engine.progress import progress_bar
from medadapt.engine.weights import torch_load_weights_only

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"

#: Computes the loss of one training batch: (model, patches, labels) -> named losses; the
#: loop minimises the "loss" entry.
StepFunction = Callable[[nn.Module, Tensor, Tensor], dict[str, Tensor]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch from the profile's one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader workers derive their seeds from the loader's, so runs repeat exactly."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass
class EpochResult:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_auroc: float | None
    val_accuracy: float | None
    lr: float
    val_score: float | None = None
    #: Wall-clock seconds of the epoch: training, batch-norm pass and validation (not the
    #: checkpoint, written beside the next epoch); and of its training alone (an adaptation
    #: method's epoch start and the steps).
    seconds: float | None = None
    train_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FitResult:
    """The outcome of :meth:`Trainer.fit`."""

    history: list[dict[str, Any]]
    best_epoch: int
    best: dict[str, Any]
    stopped_early: str | None
    best_weights: Path
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains a classifier with the profile's training settings.

    Args:
        model: the classifier (not yet wrapped for DDP).
        train_data: the training dataset, yielding (patch, class index).
        val_data: the validation dataset (patient-level validation split).
        training: the profile's ``training`` section.
        out_dir: where checkpoints and the best weights go (rank 0 only writes).
        seed: the profile's seed.
        world: this process's place in a distributed run.
        host: plugins, for the epoch-end hook.
        run: what the epoch-end hook is told about the job.
        positive_index: the class whose probability AUROC is computed for.
        param_groups: optimiser parameter groups (for per-group learning rates); default
            all trainable parameters at the profile's learning rate.
        frozen: modules kept as loaded: no gradient, batch-norm statistics not updated.
        class_weights: per-class loss weights, or None.
        step: the loss of a training batch; plain cross-entropy by default.
        quiet: no progress bar.
        selection: a label-free score that picks the best epoch from the model's
            predictions on the (unlabelled) validation data, instead of its labels.
        before_epoch: called with the epoch number before each training epoch.
        extra_modules: modules outside the model that train with it (a domain
            discriminator): moved to the device and kept in the checkpoint.
        source_validation: labelled source data, for a selection score that needs them.
        trains: False for a job that takes no training step (AdaBN): each epoch is
            ``before_epoch`` then validation.
        batch_norm_pass: when to recompute the batch-norm statistics after an epoch:
            ``"when-stale"`` (training) only when the epoch took too few steps for the
            running averages to forget the weights it started with (see
            :func:`~medadapt.engine.batchnorm.stale_fraction`); ``"always"`` (adaptation,
            where the training batches may mix sites) after every epoch.
        label: shown before the epoch line of the progress bar (which adaptation method).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        val_data: Dataset,
        training: Training,
        out_dir: Path,
        seed: int,
        world: World,
        host: PluginHost,
        run: RunInfo,
        positive_index: int,
        param_groups: Sequence[dict[str, Any]] | None = None,
        frozen: Sequence[nn.Module] = (),
        class_weights: Tensor | None = None,
        step: StepFunction | None = None,
        quiet: bool = False,
        selection: SelectionScore | None = None,
        before_epoch: Callable[[int], None] | None = None,
        extra_modules: dict[str, nn.Module] | None = None,
        trains: bool = True,
        source_validation: Dataset | None = None,
        label: str = "",
        batch_norm_pass: Literal["when-stale", "always"] = "when-stale",
    ) -> None:
        self.training = training
        self.out_dir = out_dir
        self.seed = seed
        self.world = world
        self.host = host
        self.run = run
        self.positive_index = positive_index
        self.frozen = list(frozen)
        self.quiet = quiet or not world.is_main
        self.device = world.device
        self.on_gpu = self.device.type == "cuda"
        self.amp = training.amp and self.on_gpu
        self.model = model.to(self.device)
        if self.on_gpu and training.channels_last and _is_2d(model):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.wrapped: nn.Module = self.model
        if world.distributed:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.on_gpu else None
            )
        weights = None if class_weights is None else class_weights.to(self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, ignore_index=UNLABELLED)
        self.step = step or self._supervised_step
        self.extra_modules = {k: m.to(self.device) for k, m in (extra_modules or {}).items()}
        self.trains = trains
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
        # A job that takes no step still has an optimiser, over nothing that changes, so
        # that the loop, its schedule and its checkpoints stay one code path.
        self.optimizer = _optimizer(groups if trains else [{"params": [_idle()]}], training)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=training.epochs)
            if training.schedule == "cosine"
            else torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.train_data = train_data
        self.val_data = val_data
        self.selection = selection
        self.label = f"{label}  " if label else ""
        self.source_validation = source_validation
        if selection is not None and selection.needs_source_data and source_validation is None:
            raise InvalidInputError(
                f"the selection score {selection.name!r} needs the source site's validation "
                "data: give the source profile"
            )
        self.before_epoch = before_epoch
        self.batch_norm_pass = batch_norm_pass
        self._writer = _BackgroundWriter()

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        """Train until the last epoch, early stopping, or a plugin asks to stop.

        Args:
            resume: continue from the checkpoint in ``out_dir``.

        Raises:
            InvalidInputError: ``resume`` without a checkpoint, or a checkpoint without it.
        """
        checkpoint_file = self.out_dir / CHECKPOINT
        state: dict[str, Any] = {
            "epoch": 0,
            "history": [],
            "best": None,
            "best_epoch": 0,
            "bad_epochs": 0,
        }
        if resume:
            if not checkpoint_file.is_file():
                raise InvalidInputError(
                    f"{self.out_dir}: nothing to resume ({CHECKPOINT} is missing)"
                )
            state = self._restore(checkpoint_file)
            log.info(
                "%sresumed from the checkpoint of epoch %d in %s",
                self.label,
                state["epoch"],
                self.out_dir,
            )
        elif checkpoint_file.exists() and self.world.is_main:
            raise InvalidInputError(
                f"{self.out_dir} already holds a run; add --resume to continue it, or choose "
                "another output folder"
            )
        else:
            seed_everything(self.seed)
        stopped: str | None = state.get("stopped")
        with self._progress() as progress:
            epochs = progress.add_task(
                f"{self.label}epoch", total=self.training.epochs, completed=state["epoch"]
            )
            steps = progress.add_task("step", total=None)
            for epoch in range(state["epoch"] + 1, self.training.epochs + 1):
                if stopped:
                    break
                started = time.perf_counter()
                if self.before_epoch is not None:
                    self.before_epoch(epoch)
                train_seconds = 0.0
                if self.trains:
                    train_loss, taken = self._train_epoch(epoch, progress, steps)
                    train_seconds = time.perf_counter() - started
                    stale = stale_fraction(self.model, taken, skip=self.frozen)
                    if self.batch_norm_pass == "always" or stale > 0.01:
                        self._recompute_batch_norm(epoch)
                else:
                    train_loss = 0.0
                result = self.world.broadcast(
                    self._validate(epoch, train_loss) if self.world.is_main else None
                )
                if self.trains:
                    self.scheduler.step()
                result = replace(
                    result,
                    seconds=round(time.perf_counter() - started, 3),
                    train_seconds=round(train_seconds, 3),
                )
                state["history"].append(result.as_dict())
                improved = self._improved(result, state["best"])
                if improved:
                    state["best"], state["best_epoch"] = result.as_dict(), epoch
                    state["bad_epochs"] = 0
                else:
                    state["bad_epochs"] += 1
                patience = self.training.early_stopping_patience
                if patience is not None and state["bad_epochs"] >= patience:
                    stopped = f"no improvement in {patience} epochs"
                # The previous epoch's files are complete before any plugin runs (one may
                # end the process) and before this epoch's are started.
                self._writer.wait()
                asked = self.host.epoch_end(self.run, epoch, _numbers(result.as_dict()))
                if self.world.broadcast(asked):
                    stopped = stopped or "a plugin asked to stop"
                state["epoch"], state["stopped"] = epoch, stopped
                if self.world.is_main:
                    self._write_epoch(checkpoint_file, state, improved)
                self.world.barrier()
                progress.update(epochs, advance=1, description=self.label + _describe(result))
                log.debug("%sepoch %d: %s", self.label, epoch, _describe(result))
        self._writer.wait()
        self.world.barrier()
        return FitResult(
            history=state["history"],
            best_epoch=state["best_epoch"],
            best=state["best"] or {},
            stopped_early=stopped,
            best_weights=self.out_dir / BEST,
        )

    def _train_epoch(self, epoch: int, progress: Progress, task: Any) -> tuple[float, int]:
        """One pass over the training data: the mean loss and the number of steps."""
        self.wrapped.train()
        for module in self.extra_modules.values():
            module.train()
        for module in self.frozen:
            module.eval()
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)
        loader = self._loader(self.train_data, epoch, shuffle=True)
        progress.reset(task, total=len(loader))
        total, count = 0.0, 0
        for patches, labels in loader:
            patches = self._to_device(patches)
            labels = labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                losses = self.step(self.wrapped, patches, labels)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise InvalidInputError(
                    f"the training loss became {loss.item()} in epoch {epoch}: lower "
                    "training.optimizer.lr (try a tenth)"
                )
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
            progress.update(task, advance=1, description=f"step  loss {float(loss.detach()):.3f}")
        return total / max(count, 1), len(loader)

    def _recompute_batch_norm(self, epoch: int) -> None:
        """Exact batch-norm statistics for this epoch's weights (engine/batchnorm.py)."""
        if self.training.batch_norm_batches == 0:
            return
        loader = self._loader(self.train_data, epoch, shuffle=True)
        recompute_batch_norm(
            self.model,
            loader,
            max_batches=self.training.batch_norm_batches,
            skip=self.frozen,
            prepare=self._to_device,
        )

    def _supervised_step(
        self, model: nn.Module, patches: Tensor, labels: Tensor
    ) -> dict[str, Tensor]:
        return {"loss": self.criterion(model(patches), labels)}

    @torch.no_grad()
    def _predict(self, data: Dataset, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities, features (empty without a selection score) and labels."""
        self.model.eval()
        loader = self._loader(data, epoch, shuffle=False, distributed=False)
        probabilities, labels, features = [], [], []
        for patches, target in loader:
            with self._autocast():
                if self.selection is None:
                    logits = self.model(self._to_device(patches)).float()
                else:
                    feature = self.model.features(self._to_device(patches))
                    logits = self.model.head(feature).float()
                    features.append(feature.float().flatten(1).cpu())
            probabilities.append(logits.softmax(dim=1).cpu())
            labels.append(target)
        return (
            torch.cat(probabilities).numpy(),
            torch.cat(features).numpy() if features else np.empty((0, 0)),
            torch.cat(labels).numpy(),
        )

    def _validate(self, epoch: int, train_loss: float) -> EpochResult:
        p, f, y = self._predict(self.val_data, epoch)
        score = None
        if self.selection is not None:
            if self.selection.needs_source_data:
                assert self.source_validation is not None
                sp, sf, sy = self._predict(self.source_validation, epoch)
                source = SourceValidation(sp, sf, sy)
                score = float(self.selection.score(p, f, source=source))  # type: ignore[call-arg]
            else:
                score = float(self.selection.score(p, f))
        labelled = y != UNLABELLED
        p, y = p[labelled], y[labelled]
        loss = accuracy = auroc = None
        if len(y):
            weight = self.criterion.weight
            loss = float(
                nn.functional.nll_loss(
                    torch.log(torch.from_numpy(p).clamp(min=1e-12)),
                    torch.from_numpy(y).long(),
                    weight=None if weight is None else weight.cpu().float(),
                )
            )
            accuracy = float((p.argmax(axis=1) == y).mean())
            positive = (y == self.positive_index).astype(int)
            if 0 < positive.sum() < len(y):
                auroc = float(roc_auc_score(positive, p[:, self.positive_index]))
        return EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=loss,
            val_auroc=auroc,
            val_accuracy=accuracy,
            lr=float(self.optimizer.param_groups[-1]["lr"]),
            val_score=score,
        )

    def _improved(self, result: EpochResult, best: dict[str, Any] | None) -> bool:
        if best is None:
            return True
        if self.selection is not None:
            assert result.val_score is not None
            if self.selection.higher_is_better:
                return result.val_score > best["val_score"]
            return result.val_score < best["val_score"]
        if self.training.selection_metric == "auroc" and result.val_auroc is not None:
            return best["val_auroc"] is None or result.val_auroc > best["val_auroc"]
        if result.val_loss is None or best["val_loss"] is None:
            return False
        return result.val_loss < best["val_loss"]

    # --- plumbing -----------------------------------------------------------------------------

    def _loader(
        self, data: Dataset, epoch: int, shuffle: bool, distributed: bool = True
    ) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if shuffle and distributed and self.world.distributed:
            sampler: Any = DistributedSampler(
                data,
                num_replicas=self.world.size,
                rank=self.world.rank,
                shuffle=True,
                seed=self.seed,
            )
            sampler.set_epoch(epoch)
        elif shuffle:
            sampler = RandomSampler(data, generator=generator)
        else:
            sampler = None
        workers = self.training.workers
        return DataLoader(
            data,
            batch_size=self.training.batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=_seed_worker if workers else None,
            generator=generator,
            pin_memory=self.on_gpu,
            persistent_workers=False,
        )

    def _to_device(self, patches: Tensor) -> Tensor:
        patches = patches.to(self.device, non_blocking=True)
        if self.on_gpu and self.training.channels_last and patches.dim() == 4:
            patches = patches.contiguous(memory_format=torch.channels_last)
        return patches

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def _progress(self) -> Progress:
        return progress_bar(self.quiet, transient=False)

    def _write_epoch(self, path: Path, state: dict[str, Any], improved: bool) -> None:
        """Snapshot this epoch's state, then write it while the next epoch trains."""
        model = state_to_cpu(self.model.state_dict(), copy=True)
        payload = {
            **copy.deepcopy(state),
            "model": model,
            "extra": {
                name: state_to_cpu(module.state_dict(), copy=True)
                for name, module in self.extra_modules.items()
            },
            "optimizer": state_to_cpu(self.optimizer.state_dict(), copy=True),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
        }

        def write() -> None:
            if improved:
                save_weights(model, self.out_dir / BEST)
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(handle)
            torch.save(payload, temporary)
            os.replace(temporary, path)

        self._writer.submit(write)

    def _restore(self, path: Path) -> dict[str, Any]:
        try:
            payload = torch_load_weights_only(path)
        except Exception as exc:
            raise InvalidInputError(f"{path}: the checkpoint cannot be read ({exc})") from None
        self.model.load_state_dict(payload["model"])
        for name, module in self.extra_modules.items():
            module.load_state_dict(payload["extra"][name])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"])
        keys = ("epoch", "history", "best", "best_epoch", "bad_epochs", "stopped")
        return {key: payload.get(key) for key in keys}


class _BackgroundWriter:
    """Writes files on one background thread; :meth:`wait` re-raises what went wrong."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medadapt-writer")
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


def _optimizer(groups: Sequence[dict[str, Any]], training: Training) -> torch.optim.Optimizer:
    options = training.optimizer
    groups = [{"lr": options.lr, **group} for group in groups]
    if options.name == "sgd":
        return torch.optim.SGD(
            groups, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
        )
    return torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay)


def _idle() -> nn.Parameter:
    return nn.Parameter(torch.zeros(1), requires_grad=False)


def _is_2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "epoch"}


def _describe(result: EpochResult) -> str:
    text = f"epoch {result.epoch}  train loss {result.train_loss:.3f}"
    if result.val_loss is not None:
        text += f"  val loss {result.val_loss:.3f}"
    if result.val_auroc is not None:
        text += f"  val AUROC {result.val_auroc:.3f}"
    elif result.val_score is None:
        text += "  val AUROC n/a"
    if result.val_score is not None:
        text += f"  val score {result.val_score:.3f}"
    return text
