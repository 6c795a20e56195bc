"""The engine's training loop, reused by every job that trains: epochs, validation, the best
checkpoint, early stopping, resumable checkpoints, epoch-end hooks, DDP and mixed precision.

What a step computes and how an epoch is judged come from an objective
(:class:`~medadapt.engine.training.objective.Objective`): plain supervised training for ``train``,
an adaptation method's for ``adapt``. The loop owns everything else.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.models.inference import infer
from medadapt.engine.models.model import state_to_cpu
from medadapt.engine.output.progress import Estimate, duration_text, progress_bar
from medadapt.engine.profile import Training
from medadapt.engine.training.batchnorm import recompute_batch_norm, stale_fraction
from medadapt.engine.training.checkpoints import BEST, CHECKPOINT, CHECKPOINT_SECONDS, Checkpoints
from medadapt.engine.training.distributed import World
from medadapt.engine.training.objective import Devices, EpochMeasures, Objective, ValidationOutputs

log = logging.getLogger(__name__)

#: The most memory an epoch's input batches may take to be kept for the batch-norm pass
#: after it (beyond it, the pass reads the training data again).
KEPT_BATCH_BYTES = 512 * 2**20


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
    #: checkpoint, written beside a later epoch); and of its training alone (an adaptation
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


def steps_per_epoch(size: int, batch_size: int, drop_incomplete: bool, replicas: int = 1) -> int:
    """Training steps in one epoch of ``size`` samples split over ``replicas`` processes.

    With ``drop_incomplete``, the last incomplete batch is left out, unless a process's
    share is smaller than one batch: then its epoch is that one smaller batch.

    >>> steps_per_epoch(123, 32, drop_incomplete=False), steps_per_epoch(123, 32, True)
    (4, 3)
    >>> steps_per_epoch(20, 32, drop_incomplete=True)
    1
    """
    share = -(-size // replicas)  # DistributedSampler pads every share to the same size
    if drop_incomplete and share >= batch_size:
        return share // batch_size
    return max(1, -(-share // batch_size))


def _per_replica(sampler: Any, data: Dataset) -> int:
    return len(sampler) if sampler is not None else len(data)  # type: ignore[arg-type]


class Trainer:
    """Trains a model towards an objective with the profile's training settings.

    Args:
        model: the classifier (not yet wrapped for DDP).
        train_data: the training dataset, yielding (patch, class index or -1).
        val_data: the validation dataset (patient-level validation split); every epoch's
            predictions on it are judged by ``objective.judge`` and kept in
            ``run.output_dir/validation/`` (numbers only) for the decision and audits.
        training: the profile's ``training`` section.
        run: the job, its output folder (checkpoints and the best weights; rank 0 writes)
            and its seed; the epoch-end hook is told about it.
        world: this process's place in a distributed run.
        host: plugins, for the epoch-end hook.
        objective: the loss of a training batch, which parameters learn, and how an epoch
            is judged (engine/training/objective.py).
        frozen: modules kept as loaded: no gradient, batch-norm statistics not updated.
        quiet: no progress bar.
        batch_norm_pass: when to recompute the batch-norm statistics after an epoch:
            ``"when-stale"`` (training) only when the epoch took too few steps for the
            running averages to forget the weights it started with (see
            :func:`~medadapt.engine.training.batchnorm.stale_fraction`); ``"always"`` (adaptation,
            where the training batches may mix sites) after every epoch.
        announce: log each epoch's time and the estimated time left (the ``train`` job; the
            progress bar shows the estimate either way).
        checkpoint_seconds: the longest time between two checkpoints (see
            engine/training/checkpoints.py); 0: after every epoch.
        drop_incomplete: leave out each epoch's last incomplete training batch (see
            :func:`steps_per_epoch`); validation sees every sample, the batch-norm pass the
            epoch's own batches.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        val_data: Dataset,
        training: Training,
        run: RunInfo,
        world: World,
        host: PluginHost,
        objective: Objective,
        *,
        frozen: Sequence[nn.Module] = (),
        quiet: bool = False,
        batch_norm_pass: Literal["when-stale", "always"] = "when-stale",
        announce: bool = False,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        drop_incomplete: bool = False,
    ) -> None:
        self.training = training
        self.drop_incomplete = drop_incomplete
        self.announce = announce
        self.out_dir = run.output_dir
        self.seed = run.seed
        self.world = world
        self.host = host
        self.run = run
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
        self.objective = objective
        objective.bind(Devices(self.device, self._to_device))
        self.extra_modules = {k: m.to(self.device) for k, m in objective.extra_modules().items()}
        self.trains = objective.trains
        # A job that takes no step still has an optimiser, over nothing that changes, so
        # that the loop, its schedule and its checkpoints stay one code path.
        groups = objective.parameter_groups(model) if self.trains else [{"params": [_idle()]}]
        self.optimizer = _optimizer(groups, training)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=training.epochs)
            if training.schedule == "cosine"
            else torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.train_data = train_data
        self.val_data = val_data
        self.label = f"{objective.label}  " if objective.label else ""
        self.batch_norm_pass = batch_norm_pass
        self.checkpoints = Checkpoints(self.out_dir, self.label, checkpoint_seconds)

    # --- the loop ---------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> FitResult:
        """Train until the last epoch, early stopping, or a plugin asks to stop.

        Args:
            resume: continue from the checkpoint in ``out_dir``.

        Raises:
            InvalidInputError: ``resume`` without a checkpoint, or a checkpoint without it.
        """
        try:
            return self._fit(resume)
        finally:
            self._release()

    def _release(self) -> None:
        """Finish the file writes and let go of DistributedDataParallel, whatever happened.

        The objective holds this trainer (through the device binding), so the trainer, and
        the DDP wrapper with its reducer and its hold on the process group, sit in a reference
        cycle that lives until Python's cycle collector happens to run: often only while the
        interpreter is shutting down, after :func:`leave_world` has destroyed the group. Gloo's
        worker threads then release their last tensors while Python is finalising, and a rank
        can abort with "terminate called without an active exception".
        """
        self.checkpoints.close()
        self.wrapped = self.model

    def _fit(self, resume: bool) -> FitResult:
        checkpoint_file = self.checkpoints.path
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
            state = self._restore()
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
        try:
            return self._epochs(state)
        except OSError:
            raise  # the disk or the folder refused a write: another would fail as well
        except BaseException:
            if self.world.is_main:
                self.checkpoints.write()  # Ctrl-C, SIGTERM, an error: keep the epochs done
            raise

    def _epochs(self, state: dict[str, Any]) -> FitResult:
        stopped: str | None = state.get("stopped")
        estimate = Estimate(self.training.epochs - state["epoch"])
        announced = -math.inf
        with self._progress() as progress:
            epochs = progress.add_task(
                f"{self.label}epoch", total=self.training.epochs, completed=state["epoch"]
            )
            steps = progress.add_task("step", total=None)
            for epoch in range(state["epoch"] + 1, self.training.epochs + 1):
                if stopped:
                    break
                started = time.perf_counter()
                self.objective.start_epoch(epoch)
                train_seconds = 0.0
                if self.trains:
                    train_loss, taken, seen = self._train_epoch(epoch, progress, steps)
                    train_seconds = time.perf_counter() - started
                    if self._batch_norm_pass_follows(taken):
                        self._recompute_batch_norm(epoch, seen)
                else:
                    train_loss = 0.0
                result, probabilities = self.world.broadcast(
                    self._validate(epoch, train_loss) if self.world.is_main else None
                )
                if self.trains:
                    self.scheduler.step()
                result = replace(
                    result,
                    seconds=round(time.perf_counter() - started, 3),
                    train_seconds=round(train_seconds, 3),
                )
                if self.world.is_main:
                    self.objective.end_epoch(epoch, self._predict)
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
                # The files submitted so far are complete before any plugin runs (one may
                # end the process) and before this epoch's are started.
                self.checkpoints.wait()
                asked = self.host.epoch_end(self.run, epoch, _numbers(result.as_dict()))
                if self.world.broadcast(asked):
                    stopped = stopped or "a plugin asked to stop"
                state["epoch"], state["stopped"] = epoch, stopped
                if self.world.is_main:
                    self.checkpoints.keep(self._snapshot(state), probabilities, improved)
                    if self.checkpoints.due(bool(stopped) or epoch == self.training.epochs):
                        self.checkpoints.write(background=True)
                self.world.barrier()
                took = time.perf_counter() - started
                estimate.done(1, took)
                left = "" if stopped or epoch == self.training.epochs else estimate.text()
                if left and patience is not None:
                    left += " (less if it stops early)"
                described = _describe(result) + (f"  {left}" if left else "")
                progress.update(epochs, advance=1, description=self.label + described)
                log.debug("%sepoch %d: %s", self.label, epoch, _describe(result))
                # The first epoch's estimate, then one a minute at most.
                if self.announce and not self.quiet and left and time.monotonic() - announced > 60:
                    announced = time.monotonic()
                    log.info(
                        "%sepoch %d of %d took %s; %s",
                        self.label,
                        epoch,
                        self.training.epochs,
                        duration_text(took),
                        left,
                    )
        self.checkpoints.wait()
        self.world.barrier()
        return FitResult(
            history=state["history"],
            best_epoch=state["best_epoch"],
            best=state["best"] or {},
            stopped_early=stopped,
            best_weights=self.out_dir / BEST,
        )

    def _train_epoch(
        self, epoch: int, progress: Progress, task: Any
    ) -> tuple[float, int, list[Tensor] | None]:
        """One pass over the training data: the mean loss, the number of steps, and the
        epoch's input batches when the batch-norm pass after it can reuse them (else None).

        The pass after the epoch reads the training data in the same order with the same
        augmentations (the same loader seed), so its batches are these ones; keeping them
        (up to :data:`KEPT_BATCH_BYTES`) spares reading and augmenting every sample twice.
        """
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
        wanted = self.training.batch_norm_batches
        # Kept only when the pass will run: on a long epoch under "when-stale" it does not.
        keep = wanted and self._batch_norm_pass_follows(len(loader))
        seen: list[Tensor] | None = [] if keep else None
        kept_bytes = 0
        for patches, labels in loader:
            if seen is not None and len(seen) < wanted:
                kept_bytes += patches.element_size() * patches.nelement()
                if kept_bytes > KEPT_BATCH_BYTES:
                    seen = None  # too large to keep: the pass reads the data again
                else:
                    seen.append(patches.clone())  # a copy: an objective may change its batch
            patches = self._to_device(patches)
            labels = labels.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                losses = self.objective.step(self.wrapped, patches, labels)
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
        return total / max(count, 1), len(loader), seen

    def _batch_norm_pass_follows(self, steps: int) -> bool:
        """Whether the batch-norm statistics are measured again after an epoch of ``steps``:
        always in adaptation; in training, when the running averages still hold more than 1%
        of what came before the epoch."""
        if self.batch_norm_pass == "always":
            return True
        return stale_fraction(self.model, steps, skip=self.frozen) > 0.01

    def _recompute_batch_norm(self, epoch: int, seen: list[Tensor] | None = None) -> None:
        """Exact batch-norm statistics for this epoch's weights (engine/training/batchnorm.py), over
        the epoch's own batches: ``seen`` when kept, else read again."""
        if self.training.batch_norm_batches == 0:
            return
        batches = seen if seen is not None else self._loader(self.train_data, epoch, shuffle=True)
        recompute_batch_norm(
            self.model,
            batches,
            max_batches=self.training.batch_norm_batches,
            skip=self.frozen,
            prepare=self._to_device,
        )

    def _predict(self, data: Dataset, features: bool) -> ValidationOutputs:
        """Probabilities, features (when asked for) and labels of ``data``, in order."""
        loader = self._loader(data, 0, shuffle=False, distributed=False)
        inferred = infer(
            self.model,
            loader,
            features=features,
            prepare=self._to_device,
            autocast=self._autocast,
        )
        assert inferred.probabilities is not None
        return ValidationOutputs(
            inferred.probabilities,
            inferred.features if inferred.features is not None else np.empty((0, 0)),
            inferred.labels,
        )

    def _validate(self, epoch: int, train_loss: float) -> tuple[EpochResult, np.ndarray]:
        """The epoch's result, and its probabilities on the validation split."""
        judge = self.objective.judge
        outputs = self._predict(self.val_data, judge.needs_features)
        measures = judge.measure(outputs, self._predict)
        result = EpochResult(
            epoch=epoch,
            train_loss=train_loss,
            lr=float(self.optimizer.param_groups[-1]["lr"]),
            **dataclasses.asdict(measures),
        )
        return result, outputs.probabilities

    def _improved(self, result: EpochResult, best: dict[str, Any] | None) -> bool:
        if best is None:
            return True
        fields = [f.name for f in dataclasses.fields(EpochMeasures)]
        return self.objective.judge.better(
            EpochMeasures(**{k: getattr(result, k) for k in fields}),
            EpochMeasures(**{k: best.get(k) for k in fields}),
        )

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
        batch_size = self.training.batch_size
        return DataLoader(
            data,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=_seed_worker if workers else None,
            generator=generator,
            pin_memory=self.on_gpu,
            persistent_workers=False,
            # Only training batches, and never the one batch of a set smaller than a batch.
            drop_last=shuffle
            and self.drop_incomplete
            and _per_replica(sampler, data) >= batch_size,
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

    def _snapshot(self, state: dict[str, Any]) -> dict[str, Any]:
        """This epoch's checkpoint: the loop's state and copies of every module's, the
        optimiser's, the schedule's and the random state (training goes on changing them
        while it is written)."""
        return {
            **copy.deepcopy(state),
            "model": state_to_cpu(self.model.state_dict(), copy=True),
            "extra": {
                name: state_to_cpu(module.state_dict(), copy=True)
                for name, module in self.extra_modules.items()
            },
            "optimizer": state_to_cpu(self.optimizer.state_dict(), copy=True),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def _restore(self) -> dict[str, Any]:
        payload = self.checkpoints.read()
        self.model.load_state_dict(payload["model"])
        for name, module in self.extra_modules.items():
            module.load_state_dict(payload["extra"][name])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"])
        keys = ("epoch", "history", "best", "best_epoch", "bad_epochs", "stopped")
        return {key: payload.get(key) for key in keys}


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
