"""The ``adapt`` job: run every candidate, decide which to keep, write it with its reasons.

The steps: check that the source model fits the target profile; split the target site and
strip the labels adaptation may not see (:mod:`.access`); run each candidate method at
each seed, and the unadapted model, in the engine's loop (:mod:`.runs`); let the decision
rule choose among them (:mod:`.decision`); write ``OUT/model`` (the kept model, its card
saying what the choice rested on) and ``OUT/adapt.json``.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file
from torch.utils.data import Dataset

from medadapt.engine.adaptation.access import (
    TargetSplit,
    candidate_methods,
    check_fit,
    method_class,
    source_data,
    target_split,
)
from medadapt.engine.adaptation.decision import decide, decision_rule, evidence
from medadapt.engine.adaptation.runs import (
    FINISHED,
    PROBABILITIES,
    CandidateRun,
    EpochObserver,
    fresh_model,
    probabilities,
    run_method,
)
from medadapt.engine.contracts.components import (
    UNADAPTED,
    Candidate,
    Decision,
    Evidence,
    SelectionScore,
)
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.hookspecs import RunInfo
from medadapt.engine.contracts.host import PluginHost
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.augment import training_transform
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import SiteData, open_site_data
from medadapt.engine.models.card import (
    AdaptationRecord,
    DecisionRecord,
    ModelCard,
    data_manifest_hash,
    profile_hash,
)
from medadapt.engine.models.model import (
    CARD,
    WEIGHTS,
    LoadedModel,
    backbone_features,
    file_sha256,
    load_model,
    save_model,
    write_json_atomic,
)
from medadapt.engine.models.runfolder import Provenance, claim_folder, profile_reads, remove_outputs
from medadapt.engine.output.progress import Estimate, duration_text
from medadapt.engine.output.text import read_json_file
from medadapt.engine.profile import AUTO, DEFAULT_SCORE, DEFAULT_SCORE_WITH_SOURCE, Profile
from medadapt.engine.training.distributed import World, join_world, leave_world
from medadapt.engine.training.loop import seed_everything

log = logging.getLogger(__name__)

SUMMARY = "adapt.json"
#: What ``adapt`` writes in its folder, removed when it starts afresh over one.
ADAPT_OUTPUTS = ("runs", "model", "model.tmp", SUMMARY)


@dataclass(frozen=True)
class AdaptResult:
    """What ``adapt`` kept, and what that rests on."""

    out_dir: Path
    model_dir: Path
    decision: Decision
    runs: list[CandidateRun] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> str:
        """The method kept (``source-only`` for the unadapted model)."""
        return self.decision.kept.method

    @property
    def adapted(self) -> bool:
        """Whether the kept model is an adapted one (a fact, not a claim that it is better)."""
        return not self.decision.kept.unadapted


@dataclass
class _Inputs:
    """What every candidate run of one job shares."""

    target: Profile
    registry: ComponentRegistry
    host: PluginHost
    world: World
    loaded: LoadedModel
    #: The SHA-256 of the source model's card.json, recorded in every adapted card.
    source_card_sha256: str
    site: SiteData
    split: TargetSplit
    selection: SelectionScore | None
    source_train: Dataset | None
    source_validation: Dataset | None
    quiet: bool
    observer: EpochObserver | None


def adapt(
    target: Profile,
    registry: ComponentRegistry,
    host: PluginHost,
    source_model: Path,
    out_dir: Path,
    *,
    method: str | None = None,
    source_profile: Profile | None = None,
    seeds: int = 1,
    overwrite: bool = False,
    quiet: bool = False,
    cache_dir: Path | None = None,
    observer: EpochObserver | None = None,
) -> AdaptResult:
    """Adapt ``source_model`` to the target site and write ``out_dir/model`` and a summary.

    Args:
        target: the target site's profile.
        source_model: the model folder trained at the source site.
        method: a method name or ``auto``; default the profile's ``adaptation.method``.
        source_profile: the source site's profile, for methods that need source data.
        seeds: repeat every method with this many seeds (the profile's seed, +1, ...).
        overwrite: start afresh in a folder made by other inputs (or holding the source
            model), reusing none of its runs.
        observer: told about every epoch of every run (not of runs reused from an earlier
            call), with a way to predict with that epoch's model; for benchmarks.

    The unadapted model is a candidate under ``auto``, and under a named method when the
    validation patients are labelled; the decision rule keeps it unless the evidence says
    otherwise. A run already finished in ``out_dir`` (same inputs, method and seed) is
    reused, so an interrupted job continues where it stopped when run again. The folder is
    claimed first (see :mod:`medadapt.engine.models.runfolder`).

    Raises:
        InvalidInputError: the model and profile do not fit together, the chosen method or
            decision rule needs data that were not given, the data are unusable, or
            ``out_dir`` is held by another job, was made by other inputs or holds the
            source model (without ``overwrite``).
    """
    if seeds < 1:
        raise InvalidInputError(f"--seeds must be at least 1, got {seeds}")
    choice = target.adaptation_settings
    name = method or choice.method
    loaded = load_model(source_model, registry)
    check_fit(loaded.card, target)
    same_classes = list(loaded.card.classes) == list(target.task.classes)
    methods = candidate_methods(name, choice, registry, source_profile is not None, same_classes)
    provenance = Provenance(
        "adapt",
        {
            "profile": profile_hash(target),
            "source model": loaded.card.weights_sha256,
            "source profile": profile_hash(source_profile) if source_profile else None,
        },
        {"seed": target.seed, "method": name, "seeds": seeds},
        {"site": repr(target.site.name), "source model": str(source_model)},
    )
    source_card_sha256 = file_sha256(source_model / CARD)  # before a --overwrite removes it
    reads = [source_model, *profile_reads(target)]
    reads += profile_reads(source_profile) if source_profile else []
    with claim_folder(out_dir, provenance, overwrite=overwrite, reads=reads) as claim:
        if claim.fresh:
            remove_outputs(out_dir, ADAPT_OUTPUTS)
        world = join_world(target.training.device)
        try:
            site = open_site_data(target, registry, cache_dir)
            split = target_split(site.records, target)
            if not split.train or not split.validation:
                raise InvalidInputError(
                    f"{target.site.name}: adaptation needs target patients in both the train and "
                    "validation splits; more patients or other data.split fractions are needed"
                )
            rule = decision_rule(target, registry, split.validation_labelled)
            selection = _selection(target, registry, split, source_profile is not None)
            if selection is not None and selection.needs_source_data and source_profile is None:
                raise InvalidInputError(
                    f"the selection score {selection.name!r} needs the source site's validation "
                    "data: give the source site's profile with --source-profile"
                )
            source_train = source_validation = None
            if source_profile is not None and (
                any(method_class(registry, m).needs_source_data for m in methods)
                or (selection is not None and selection.needs_source_data)
            ):
                source_train, source_validation = source_data(source_profile, registry, cache_dir)
            inputs = _Inputs(
                target=target,
                registry=registry,
                host=host,
                world=world,
                loaded=loaded,
                source_card_sha256=source_card_sha256,
                site=site,
                split=split,
                selection=selection,
                source_train=source_train,
                source_validation=source_validation,
                quiet=quiet,
                observer=observer,
            )
            compare = same_classes and (name == AUTO or split.validation_labelled)
            plan = [(UNADAPTED, target.seed)] if compare else []
            plan += [(m, s) for s in range(target.seed, target.seed + seeds) for m in methods]
            runs = _run_plan(plan, out_dir, inputs)
            world.barrier()
            found = evidence(
                [Candidate(r.method, r.seed, r.probabilities()) for r in runs],
                split.validation,
                target.task.classes,
                target.task.positive_class,
                target.seed,
            )
            adapted = [r for r in runs if r.method != UNADAPTED]
            best = _candidate(found, max(adapted, key=_ranking(selection))) if adapted else None
            decision, decided_by = decide(rule, found, None if name == AUTO else name, best)
            return _conclude(out_dir, runs, found, decision, decided_by, inputs, name)
        finally:
            leave_world()


def _selection(
    target: Profile, registry: ComponentRegistry, split: TargetSplit, has_source: bool
) -> SelectionScore | None:
    """The label-free score that judges epochs, unless the validation split keeps labels."""
    if split.validation_labelled:
        return None
    choice = target.selection
    default = DEFAULT_SCORE_WITH_SOURCE if has_source else DEFAULT_SCORE
    score = registry.build(
        SelectionScore,
        choice.score if choice else default,
        choice.params if choice else {},
        base_dir=target.base_dir,
    )
    return score


def _run_plan(
    plan: Sequence[tuple[str, int]], out_dir: Path, inputs: _Inputs
) -> list[CandidateRun]:
    """Every candidate run in turn; after each, the estimated time the rest will take, on
    the log: the training epochs and the passes (runs that train nothing) still to come,
    each at the pace of its own kind so far (a training epoch is at least a pass until one
    is timed; see :class:`~medadapt.engine.output.progress.Estimate`)."""
    epochs = inputs.target.training.epochs

    def kind(name: str) -> str:  # a run that trains counts its epochs; one that does not, 1
        return "epoch" if method_class(inputs.registry, name).trains else "pass"

    units = {"epoch": epochs, "pass": 1}
    totals = {k: float(sum(units[k] for n, _ in plan if kind(n) == k)) for k in units}
    estimate = Estimate(totals, cheaper="pass")
    runs = []
    for number, (name, seed) in enumerate(plan, start=1):
        folder = out_dir / "runs" / f"{name}-seed{seed}"
        finished = CandidateRun.read(folder)  # a run an earlier call finished is reused
        started = time.perf_counter()
        runs.append(finished or _run_candidate(name, seed, folder, inputs))
        took = time.perf_counter() - started
        reused = finished is not None
        estimate.done(units[kind(name)], None if reused else took, kind(name))
        if number < len(plan) and not inputs.quiet and inputs.world.is_main:
            how = "reused" if reused else duration_text(took)
            log.info(
                "adapt: %d of %d runs done (%s, seed %d: %s); %s",
                number,
                len(plan),
                name,
                seed,
                how,
                estimate.text(),
            )
    return runs


def _run_candidate(name: str, seed: int, folder: Path, inputs: _Inputs) -> CandidateRun:
    """Run one method at one seed (resuming from its checkpoint in ``folder``), and write
    its model to ``folder/model``."""
    target, world = inputs.target, inputs.world
    choice = target.adaptation_settings
    cls = method_class(inputs.registry, name)
    method = cls.from_params(choice.params if name == choice.method else {})
    seed_everything(seed)
    state = inputs.loaded.model.state_dict()
    classes = target.task.classes
    model, backbone = fresh_model(inputs.registry, inputs.loaded.card, state, len(classes))
    stages = backbone.stages(backbone_features(model))
    unknown = [stage for stage in target.training.freeze if stage not in stages]
    if unknown:
        raise InvalidInputError(
            f"training.freeze names {', '.join(map(repr, unknown))}, which the model's backbone "
            f"{backbone.name!r} does not have; its stages are: {', '.join(stages) or 'none'}"
        )
    loader, split = inputs.site.loader, inputs.split
    transform = training_transform(target, inputs.registry)
    validation = PatchDataset(loader, split.validation, classes)
    fit = run_method(
        model,
        method,
        PatchDataset(loader, split.train, classes, transform=transform, seed=seed),
        validation,
        target.training,
        RunInfo(job="adapt", site=target.site.name, output_dir=folder, seed=seed),
        world,
        inputs.host,
        classes.index(target.task.positive_class),
        selection=inputs.selection,
        plain=PatchDataset(loader, split.train, classes),
        source_train=inputs.source_train,
        source_validation=inputs.source_validation,
        quiet=inputs.quiet,
        frozen=[m for stage in target.training.freeze for m in stages[stage]],
        observer=inputs.observer,
    )
    run = CandidateRun(
        method=name,
        seed=seed,
        score=fit.best.get("val_score"),
        val_auroc=fit.best.get("val_auroc"),
        best_epoch=fit.best_epoch,
        folder=folder,
    )
    if world.is_main:
        np.save(folder / PROBABILITIES, probabilities(model, validation, world.device))
        card = _card(run, inputs, fit.history, decision=None)
        weights = load_file(str(folder / "best.safetensors"))
        save_model(folder / "model", weights, card)
        write_json_atomic(folder / "history.json", {"history": fit.history})
        write_json_atomic(folder / FINISHED, run.as_dict())
    return run


def _card(
    run: CandidateRun,
    inputs: _Inputs,
    history: list[dict[str, Any]],
    decision: DecisionRecord | None,
) -> ModelCard:
    """The card of a candidate's model: the source card, with the target site and what
    adaptation did; the unadapted model keeps its source site (its weights are unchanged)."""
    target, source = inputs.target, inputs.loaded.card
    record = AdaptationRecord(
        method=run.method,
        selection=_selection_name(inputs.selection),
        target_labels=target.adaptation_settings.target_labels,
        source_site=source.site,
        source_weights_sha256=str(source.weights_sha256),
        source_card_sha256=inputs.source_card_sha256,
        decision=decision,
    )
    if run.method == UNADAPTED:
        return source.model_copy(update={"adaptation": record})
    return source.model_copy(
        update={
            "history": history,
            "source_history": source.history,
            "site": target.site.name,
            "intended_use": target.intended_use,
            "body_region": target.body_region,
            "classes": target.task.classes,
            "positive_class": target.task.positive_class,
            "seed": run.seed,
            "profile_sha256": profile_hash(target),
            "data_manifest_sha256": data_manifest_hash(
                inputs.split.train + inputs.split.validation
            ),
            "best_epoch": run.best_epoch,
            "validation": {"val_score": run.score, "val_auroc": run.val_auroc},
            "adaptation": record,
        }
    )


def _conclude(
    out_dir: Path,
    runs: list[CandidateRun],
    found: Evidence,
    decision: Decision,
    rule: str,
    inputs: _Inputs,
    name: str,
) -> AdaptResult:
    """Write the kept model, its card saying what the choice rested on, and adapt.json."""
    kept = next(r for r in runs if (r.method, r.seed) == (decision.kept.method, decision.kept.seed))
    record = DecisionRecord(
        rule=rule,
        evidence=decision.evidence,
        statement=decision.statement,
        margin=decision.margin,
    )
    model_dir = out_dir / "model"
    if inputs.world.is_main:
        history = _history(kept.folder)
        card = _card(kept, inputs, history, record)
        temporary = model_dir.with_name(model_dir.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        save_model(temporary, load_file(str(kept.folder / "model" / WEIGHTS)), card)
        shutil.rmtree(model_dir, ignore_errors=True)
        temporary.rename(model_dir)
    summary = _summary(runs, found, decision, rule, inputs, name)
    if inputs.world.is_main:
        write_json_atomic(out_dir / SUMMARY, summary)
    inputs.world.barrier()
    return AdaptResult(out_dir, model_dir, decision, runs, summary)


def _history(folder: Path) -> list[dict[str, Any]]:
    return list(read_json_file(folder / "history.json", "a run's history")["history"])


def _summary(
    runs: Sequence[CandidateRun],
    found: Evidence,
    decision: Decision,
    rule: str,
    inputs: _Inputs,
    name: str,
) -> dict[str, Any]:
    target, split, selection = inputs.target, inputs.split, inputs.selection
    by_method: dict[str, list[CandidateRun]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    names = {(c.method, c.seed): found.name(c) for c in found.candidates}
    kept = decision.kept
    kept_run = next(r for r in runs if (r.method, r.seed) == (kept.method, kept.seed))
    return {
        "job": "adapt",
        "site": target.site.name,
        "source_model": {
            "site": inputs.loaded.card.site,
            "weights_sha256": inputs.loaded.card.weights_sha256,
        },
        "method": name,
        "selection": _selection_name(selection),
        "selection_higher_is_better": True if selection is None else selection.higher_is_better,
        "target_labels": target.adaptation_settings.target_labels,
        "samples": {
            "train": len(split.train),
            "validation": len(split.validation),
            "validation_patients": len({r.patient_key for r in split.validation}),
            "test_set_aside": split.set_aside,
            "labelled": split.labelled,
        },
        "seeds": len({r.seed for r in runs if r.method != UNADAPTED}) or 1,
        "methods": {
            m: {
                "score_mean": statistics.mean(_value(r) for r in rs),
                "score_sd": statistics.stdev([_value(r) for r in rs]) if len(rs) > 1 else 0.0,
                "runs": [
                    {**r.as_dict(), "compared": decision.figures.get(names[(r.method, r.seed)])}
                    for r in rs
                ],
            }
            for m, rs in by_method.items()
        },
        "decision": {
            "rule": rule,
            "evidence": decision.evidence,
            "statement": decision.statement,
            "margin": decision.margin,
            "figures": decision.figures,
        },
        "kept": kept.method,
        "kept_run": kept_run.as_dict(),
        "adapted": not kept.unadapted,
        "measured_with_labels": decision.evidence == "labels",
    }


def _candidate(found: Evidence, run: CandidateRun) -> Candidate:
    return next(c for c in found.candidates if (c.method, c.seed) == (run.method, run.seed))


def _ranking(selection: SelectionScore | None) -> Callable[[CandidateRun], float]:
    """A key where larger is better: the best epoch's selection score (its goodness), or its
    validation AUROC."""

    def key(run: CandidateRun) -> float:
        value = _value(run)
        if value != value:
            return float("-inf")
        return value if selection is None else selection.goodness(value)

    return key


def _value(run: CandidateRun) -> float:
    value = run.score if run.score is not None else run.val_auroc
    return float("nan") if value is None else value


def _selection_name(selection: SelectionScore | None) -> str:
    return selection.name if selection is not None else "validation AUROC (target labels)"
