"""The ``train`` job: a source model at its home hospital, from its profile."""

from __future__ import annotations

import platform
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from medadapt.engine.contracts.components import Backbone, SampleRecord, Split
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.augment import training_transform
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import open_site_data
from medadapt.engine.data.splits import keep_labels_per_class, site_split
from medadapt.engine.models.card import ModelCard, card_fields, data_manifest_hash, profile_hash
from medadapt.engine.models.model import (
    CARD,
    backbone_features,
    build_classifier,
    profile_backbone,
    save_model,
    write_json_atomic,
)
from medadapt.engine.models.runfolder import Provenance, claim_folder, profile_reads, remove_outputs
from medadapt.engine.models.weights import load_imagenet_weights, load_weights_file
from medadapt.engine.profile import Profile
from medadapt.engine.training.checkpoints import BEST, CHECKPOINT, VALIDATION_PREDICTIONS
from medadapt.engine.training.diagnostics import diagnose
from medadapt.engine.training.distributed import World, join_world, leave_world
from medadapt.engine.training.loop import FitResult, Trainer, seed_everything
from medadapt.engine.training.objective import EpochJudge, Supervised

RUN = "run.json"
#: What a run of ``train`` writes in its folder, removed when it starts afresh over one.
TRAIN_OUTPUTS = ("model", RUN, CHECKPOINT, BEST, VALIDATION_PREDICTIONS)


@dataclass(frozen=True)
class TrainResult:
    """Where the model went and how it did."""

    out_dir: Path
    model_dir: Path
    best_epoch: int
    best: dict[str, Any]
    diagnostics: list[str]
    stopped_early: str | None
    counts: dict[str, dict[str, int]]


def train(
    profile: Profile,
    registry: ComponentRegistry,
    host: PluginHost,
    out_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Train a classifier on the profile's labelled data and write the model folder.

    The data are split by patient with the profile's seed; the model is validated every
    epoch on the validation split, the best epoch is kept, and ``out_dir/model`` gets its
    weights and card. Under torchrun every process calls this; rank 0 writes. The folder
    is claimed first (see :mod:`medadapt.engine.models.runfolder`): writable, locked, and made by
    this profile.

    Args:
        resume: continue the interrupted run in ``out_dir`` (made by this same profile).
        overwrite: start afresh in a folder that holds another run or a finished model.

    Raises:
        InvalidInputError: the profile lacks what training needs, the data are unusable,
            ``out_dir`` is held by another job, made by something else, or already holds
            this run (without ``resume``) or a finished model (without ``overwrite``).
    """
    for section in ("data", "backbone"):
        if getattr(profile, section) is None:
            raise InvalidInputError(
                f"the profile of {profile.site.name!r} has no {section!r} section; training "
                "needs one (see hospital_profiles/template.yaml)"
            )
    if resume and overwrite:
        raise InvalidInputError(
            "resume continues the run in the folder and overwrite starts afresh over it: "
            "give one of them"
        )
    provenance = Provenance(
        "train",
        {"profile": profile_hash(profile)},
        {"seed": profile.seed},
        {"site": repr(profile.site.name)},
    )
    with claim_folder(
        out_dir, provenance, overwrite=overwrite, reads=profile_reads(profile)
    ) as claim:
        if claim.fresh:
            remove_outputs(out_dir, TRAIN_OUTPUTS)
        elif not resume and (out_dir / "model" / CARD).is_file():
            raise InvalidInputError(
                f"{out_dir} already holds the model this profile trained ({out_dir / 'model'}); "
                "use it, or add --overwrite to train it again"
            )
        world = join_world(profile.training.device)
        try:
            return _train(profile, registry, host, out_dir, world, resume, quiet, cache_dir)
        finally:
            leave_world()


def _train(
    profile: Profile,
    registry: ComponentRegistry,
    host: PluginHost,
    out_dir: Path,
    world: World,
    resume: bool,
    quiet: bool,
    cache_dir: Path | None,
) -> TrainResult:
    assert profile.backbone is not None
    assert profile.data is not None
    classes = profile.task.classes
    data = open_site_data(profile, registry, cache_dir)
    records = site_split(data.records, profile)
    if profile.training.labels_per_class is not None:
        train = [r for r in records if r.split is Split.TRAIN]
        budget = iter(keep_labels_per_class(train, profile.training.labels_per_class, profile.seed))
        records = [next(budget) if r.split is Split.TRAIN else r for r in records]
    records = [r for r in records if r.label is not None]
    by_split = {split: [r for r in records if r.split is split] for split in Split}
    counts = {split.value: dict(Counter(r.label for r in rs)) for split, rs in by_split.items()}
    if not by_split[Split.TRAIN] or not by_split[Split.VALIDATION]:
        raise InvalidInputError(
            f"training needs samples in both the train and validation splits, got {counts}; "
            "more patients or other data.split fractions are needed"
        )
    seed_everything(profile.seed)
    backbone = profile_backbone(profile, registry)
    model = build_classifier(
        backbone,
        profile.preprocessing.patch_mode,
        len(classes),
        _pretrained(profile, backbone),
        pooling=profile.preprocessing.pooling,
    )
    frozen = _freeze(model, backbone, profile.training.freeze)
    train_data = PatchDataset(
        data.loader,
        by_split[Split.TRAIN],
        classes,
        transform=training_transform(profile, registry),
        seed=profile.seed,
    )
    val_data = PatchDataset(data.loader, by_split[Split.VALIDATION], classes)
    weights = (
        _class_weights(train_data.labels(), len(classes))
        if profile.training.class_weights == "balanced"
        else None
    )
    judge = EpochJudge(
        classes.index(profile.task.positive_class), profile.training.selection_metric, weights
    )
    trainer = Trainer(
        model,
        train_data,
        val_data,
        profile.training,
        RunInfo(job="train", site=profile.site.name, output_dir=out_dir, seed=profile.seed),
        world,
        host,
        Supervised(judge, _param_groups(model, profile), weights),
        frozen=frozen,
        quiet=quiet,
        announce=True,
    )
    fit = trainer.fit(resume=resume)
    notes = diagnose(fit.history, profile.training.selection_metric)
    model_dir = out_dir / "model"
    if world.is_main:
        model.load_state_dict(load_file(str(fit.best_weights)))
        card = _card(profile, backbone, records, fit, world, host)
        save_model(model_dir, model, card)
        write_json_atomic(
            out_dir / RUN,
            {
                "job": "train",
                "site": profile.site.name,
                "history": fit.history,
                "best_epoch": fit.best_epoch,
                "best": fit.best,
                "stopped_early": fit.stopped_early,
                "diagnostics": notes,
                "samples": counts,
                "rejected_inputs": len(data.rejections),
                "world_size": world.size,
            },
        )
    world.barrier()
    return TrainResult(
        out_dir, model_dir, fit.best_epoch, fit.best, notes, fit.stopped_early, counts
    )


def _pretrained(profile: Profile, backbone: Backbone) -> dict[str, Tensor] | None:
    assert profile.backbone is not None
    if profile.backbone.weights == "none":
        return None
    if profile.backbone.weights == "imagenet":
        return load_imagenet_weights(backbone.name, backbone.imagenet_url)
    assert profile.backbone.weights_file is not None
    return load_weights_file(profile.backbone.weights_file)


def _freeze(model: nn.Module, backbone: Backbone, names: list[str]) -> list[nn.Module]:
    """Stop gradients into the named stages; returns their modules (kept in eval mode)."""
    stages = backbone.stages(backbone_features(model))
    frozen = [module for name in names for module in stages[name]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return frozen


def _param_groups(model: nn.Module, profile: Profile) -> list[dict[str, Any]]:
    """The backbone learns at lr x backbone_lr_factor, the new head at lr."""
    options = profile.training.optimizer
    backbone = [p for p in model.features.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": options.lr}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": options.lr * options.backbone_lr_factor})
    return groups


def _class_weights(labels: list[int], num_classes: int) -> Tensor:
    """Weights so that every class counts as much in the loss, whatever its share."""
    counts = torch.bincount(torch.tensor([i for i in labels if i >= 0]), minlength=num_classes)
    counts = counts.clamp(min=1).float()
    return counts.sum() / (num_classes * counts)


def _card(
    profile: Profile,
    backbone: Backbone,
    records: list[SampleRecord],
    fit: FitResult,
    world: World,
    host: PluginHost,
) -> ModelCard:
    assert profile.backbone is not None
    weights = profile.backbone.weights
    return ModelCard(
        **card_fields(
            profile,
            backbone,
            weights if weights in ("imagenet", "none") else Path(weights).name,
        ),
        training=profile.training.model_dump(mode="json"),
        data_manifest_sha256=data_manifest_hash(records),
        best_epoch=fit.best_epoch,
        validation={k: v for k, v in fit.best.items() if k.startswith("val_")},
        versions={
            "medadapt": metadata.version("medadapt"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "plugins": {p.name: p.version for p in host.describe()},
        },
        world_size=world.size,
        device=str(world.device),
        history=fit.history,
    )
