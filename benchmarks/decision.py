"""What ``auto`` would keep under each decision rule and label budget, from one set of runs.

``benchmarks/adaptation.py`` runs every method once per pair and seed, without early
stopping, and keeps for every run and epoch its predictions on the target validation
patients (the engine writes them) and on the target test patients (an epoch observer the
benchmark passes to ``adapt``). From these the same runs answer every question:

- label-free: each run's epoch is the one the selection score chose (the engine's best
  epoch); the rule decides on those epochs' validation predictions, without labels;
- with validation labels (all of the validation patients, or the first 10 or 20 of them
  in a seeded random order): each run's epoch is the one the engine's own epoch judge picks
  by those labels, and the rule decides on those epochs' predictions and labels.

The rules are the engine's own components (plugins/decision_rules.py) and the epoch judge
is the engine's (engine/training/objective.py); only the test AUROC of what they keep is the
benchmark's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RecordedRun:
    """One method at one seed: its epochs' predictions and the epoch the engine chose.

    Attributes:
        validation: per epoch, probabilities on the validation samples (samples, classes).
        test: per epoch, the positive-class probability of each test sample.
        label_free_epoch: the epoch the selection score chose (the engine's best epoch).
    """

    method: str
    seed: int
    validation: dict[int, np.ndarray]
    test: dict[int, np.ndarray]
    label_free_epoch: int


@dataclass
class Truth:
    """What only the benchmark knows: the labels and the patients of both splits."""

    validation_labels: np.ndarray  # 1 positive, 0 other
    validation_patients: list[str]
    test_labels: np.ndarray
    positive_index: int
    seed: int


@dataclass
class Outcome:
    """What one rule kept at one seed, and how it did on the test split."""

    kept: str
    epoch: int
    test_auroc: float | None
    statement: str
    figures: dict[str, Any] = field(default_factory=dict)


def test_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from medadapt.engine import auroc

    return auroc(labels, scores)


def budget_labels(truth: Truth, patients: int | None) -> np.ndarray:
    """The validation labels a site with this budget has: all of them (None), or those of
    ``patients`` validation patients drawn in a seeded order; -1 for the others."""
    if patients is None:
        return truth.validation_labels.copy()
    unique = sorted(set(truth.validation_patients))
    order = np.random.default_rng(truth.seed).permutation(len(unique))
    chosen = {unique[i] for i in order[:patients]}
    return np.array(
        [
            y if p in chosen else -1
            for y, p in zip(truth.validation_labels, truth.validation_patients, strict=True)
        ]
    )


def _no_other_data(data: Any, features: bool) -> Any:
    raise AssertionError("the labelled epoch judge predicts no other data")


def labelled_epoch(run: RecordedRun, labels: np.ndarray, positive_index: int) -> int:
    """The epoch the engine's epoch judge picks with these validation labels."""
    from medadapt.engine.training.objective import EpochJudge, ValidationOutputs

    judge = EpochJudge(positive_index, "auroc")
    class_index = np.where(
        labels < 0, -1, np.where(labels == 1, positive_index, 1 - positive_index)
    )
    best_epoch, best = 0, None
    for epoch in sorted(run.validation):
        outputs = ValidationOutputs(run.validation[epoch], np.empty((0, 0)), class_index)
        measures = judge.measure(outputs, _no_other_data)
        if best is None or judge.better(measures, best):
            best_epoch, best = epoch, measures
    return best_epoch


def decide(rule: Any, runs: list[RecordedRun], truth: Truth, labels: np.ndarray | None) -> Outcome:
    """What ``rule`` keeps among ``runs`` (the unadapted model among them) with ``labels``
    (None: label-free, each run at its label-free epoch)."""
    from medadapt.engine import Candidate, Evidence

    epochs = {
        (r.method, r.seed): r.label_free_epoch
        if labels is None
        else labelled_epoch(r, labels, truth.positive_index)
        for r in runs
    }
    candidates = tuple(
        Candidate(r.method, r.seed, r.validation[epochs[(r.method, r.seed)]]) for r in runs
    )
    evidence = Evidence(
        candidates,
        tuple(truth.validation_patients),
        labels,
        truth.positive_index,
        seed=truth.seed,
    )
    decision = rule.decide(evidence)
    kept = next(r for r in runs if (r.method, r.seed) == (decision.kept.method, decision.kept.seed))
    epoch = epochs[(kept.method, kept.seed)]
    return Outcome(
        kept.method,
        epoch,
        test_auroc(truth.test_labels, kept.test[epoch]),
        decision.statement,
        decision.figures,
    )


def method_aurocs(runs: list[RecordedRun], truth: Truth, labels: np.ndarray | None) -> dict:
    """Each method's test AUROC at the epoch it would have with these labels (None:
    label-free)."""
    result = {}
    for run in runs:
        epoch = (
            run.label_free_epoch
            if labels is None
            else labelled_epoch(run, labels, truth.positive_index)
        )
        result[run.method] = test_auroc(truth.test_labels, run.test[epoch])
    return result


def save_records(path: Any, runs: list[RecordedRun], truth: Truth) -> None:
    """Keep a pair's recorded runs (numbers and pseudonyms only), so that the development
    run's alternatives can be judged again without training again."""
    arrays: dict[str, np.ndarray] = {
        "truth/validation_labels": truth.validation_labels,
        "truth/validation_patients": np.array(truth.validation_patients),
        "truth/test_labels": truth.test_labels,
        "truth/numbers": np.array([truth.positive_index, truth.seed]),
    }
    for run in runs:
        key = f"{run.method}/{run.seed}"
        arrays[f"{key}/label_free_epoch"] = np.array(run.label_free_epoch)
        for epoch, table in run.validation.items():
            arrays[f"{key}/validation/{epoch}"] = table
        for epoch, scores in run.test.items():
            arrays[f"{key}/test/{epoch}"] = scores
    np.savez_compressed(path, **arrays)


def load_records(path: Any) -> tuple[list[RecordedRun], Truth]:
    """The runs and truth :func:`save_records` kept."""
    with np.load(path, allow_pickle=False) as stored:
        data = {key: stored[key] for key in stored.files}
    positive_index, seed = (int(v) for v in data["truth/numbers"])
    truth = Truth(
        data["truth/validation_labels"],
        [str(p) for p in data["truth/validation_patients"]],
        data["truth/test_labels"],
        positive_index,
        seed,
    )
    runs: dict[tuple[str, int], RecordedRun] = {}
    for key, value in data.items():
        method, run_seed, *rest = key.split("/")
        if method == "truth":
            continue
        run = runs.setdefault(
            (method, int(run_seed)), RecordedRun(method, int(run_seed), {}, {}, 0)
        )
        if rest == ["label_free_epoch"]:
            run.label_free_epoch = int(value)
        elif rest[0] == "validation":
            run.validation[int(rest[1])] = value
        else:
            run.test[int(rest[1])] = value
    return list(runs.values()), truth


#: The alternatives the development run judges: (rule, parameters, budget) per row. Budget:
#: None label-free, else the number of labelled validation patients (0: all of them).
def development_grid() -> dict[str, tuple[str, dict[str, Any], int | None]]:
    grid: dict[str, tuple[str, dict[str, Any], int | None]] = {}
    for budget, name in ((0, "validation split"), (20, "20 patients"), (10, "10 patients")):
        for level in (0.80, 0.90, 0.95):
            for margin in (0.0, 0.01, 0.02):
                grid[f"{name}: level {level:.2f}, margin {margin:.2f}"] = (
                    "validation-bootstrap",
                    {"level": level, "margin": margin},
                    budget,
                )
        grid[f"{name}: unguarded"] = ("best-validation-auroc", {}, budget)
    for consensus in (0.0, 0.6, 0.7, 0.8, 0.9):
        for stability in (0.80, 0.90, 0.95, 0.99):
            grid[f"label-free: consensus {consensus:.2f}, stability {stability:.2f}"] = (
                "agreement-guard",
                {"consensus": consensus, "stability": stability},
                None,
            )
    grid["label-free: unguarded (EnsV)"] = ("ensemble-agreement", {}, None)
    return grid


def judge_development(folder: Any, only: str = "") -> list[str]:
    """Every alternative of :func:`development_grid` on every recorded pair-seed under
    ``folder`` (``<pair>-seed<N>.npz``), as a Markdown table per pair: mean test AUROC, the
    gap to the best single method at the same labels' epochs, the worst seed against the
    unadapted model, and how often it kept the unadapted model or harmed."""
    from pathlib import Path

    from medadapt.engine import UNADAPTED, ComponentKind, get_plugin_host

    registry = get_plugin_host().registry()
    files = sorted(Path(folder).glob("*-seed*.npz"))
    if not files:
        raise SystemExit(f"{folder}: no recorded pair-seeds (<pair>-seed<N>.npz) found")
    pairs: dict[str, list[Path]] = {}
    for path in files:
        pairs.setdefault(path.stem.rsplit("-seed", 1)[0], []).append(path)
    lines: list[str] = []
    for pair, paths in pairs.items():
        recorded = [load_records(p) for p in paths]
        seeds = [truth.seed for _, truth in recorded]
        # What depends on the label budget only, not on the rule: once per budget.
        budgets = {budget for _, _, budget in development_grid().values()}
        labels_of = {
            budget: [
                None if budget is None else budget_labels(truth, budget or None)
                for _, truth in recorded
            ]
            for budget in budgets
        }
        best_of = {budget: _best_mean(recorded, labels_of[budget]) for budget in budgets}
        unadapted_of = [
            test_auroc(truth.test_labels, run.test[min(run.test)])
            for runs, truth in recorded
            for run in runs
            if run.method == UNADAPTED
        ]
        lines += [
            f"### {pair} (seeds {', '.join(map(str, seeds))})",
            "",
            "| alternative | mean | vs best method | worst seed vs unadapted | kept unadapted "
            "| harm | kept, per seed |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for label, (rule_name, params, budget) in development_grid().items():
            if only not in label:
                continue
            rule = registry.create(ComponentKind.DECISION_RULES, rule_name, params)
            values, differences, kept = [], [], []
            for (runs, truth), labels, base in zip(
                recorded, labels_of[budget], unadapted_of, strict=True
            ):
                outcome = decide(rule, runs, truth, labels)
                values.append(outcome.test_auroc)
                differences.append(outcome.test_auroc - base)
                kept.append(outcome.kept)
            mean = float(np.mean(values))
            lines.append(
                f"| {label} | {mean:.3f} | {mean - best_of[budget]:+.3f} | {min(differences):+.3f} "
                f"| {kept.count(UNADAPTED)}/{len(kept)} | {sum(d < 0 for d in differences)}"
                f"/{len(kept)} | {', '.join(kept)} |"
            )
        lines.append("")
    return lines


def _best_mean(recorded: list[tuple[list[RecordedRun], Truth]], labels: list[Any]) -> float:
    """The best single adapted method's mean test AUROC over the pair-seeds, each at the
    epochs these labels pick (None: label-free)."""
    from medadapt.engine import UNADAPTED

    per_method: dict[str, list[float]] = {}
    for (runs, truth), chosen in zip(recorded, labels, strict=True):
        for method, value in method_aurocs(runs, truth, chosen).items():
            if method != UNADAPTED:
                per_method.setdefault(method, []).append(value)
    return max(float(np.mean(v)) for v in per_method.values())


if __name__ == "__main__":
    import sys

    # python benchmarks/decision.py [RECORDS_FOLDER [ROWS_CONTAINING]]
    folder = sys.argv[1] if len(sys.argv) > 1 else "build/bench-development/records"
    print("\n".join(judge_development(folder, *sys.argv[2:3])))
