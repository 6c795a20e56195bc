"""Does augmentation help, does an unsafe one hurt, does scanner randomisation travel?

Two experiments on simulated hospitals, over several seeds (the profile seed: split,
initialisation, augmentation draws), with ResNet-18 from scratch on 2D 48 x 48 patches in
the soft-tissue window (level 40, width 400) in which nodule density is read:

1. Small data (20 and 40 training-site patients, 10 seeds): no augmentation, the safe
   default set (flips, small rotations, shifts), and an HU shift of up to 300 HU, which the
   profile check refuses for this task (labels depend on absolute HU, tolerance 20 HU); to
   measure its harm anyway, that run declares a 300 HU tolerance. Scored on 60 held-out
   patients of the same hospital; differences are paired by seed.
2. Scanner randomisation (3 seeds): trained at the smooth-kernel, standard-dose site (80 patients)
   with and without noise, kernel and calibration augmentations, then scored on 60 patients
   of the same site and 60 of each of two sharp-kernel sites whose water reads +8 HU: at
   low dose (1.5 mGy) and ultra-low dose (0.3 mGy). In the soft-tissue window the lung is
   clipped to one value, and scanner noise is large against what is left.
   This task declares labels that depend on size and shape only (the physicist's statement
   that fine texture and small HU changes do not decide the class), so those augmentations
   pass the check.

Takes about 15 minutes on 2 cores, so ``make bench`` leaves it out; RESULTS.md keeps its
last measured section, dated.

    .venv/bin/python benchmarks/augmentation_effect.py [--quick]
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path
from typing import Any

import suite
from sites import site_profile
from suite import Section

SAFE = [
    {"name": "random-flip", "params": {"axis": "left-right"}},
    {"name": "random-flip", "params": {"axis": "anterior-posterior"}},
    {"name": "random-rotate", "params": {"max_degrees": 15}},
    {"name": "random-shift", "params": {"max_voxels": 3}},
]
UNSAFE = [*SAFE, {"name": "hu-shift", "params": {"max_shift_hu": 300, "probability": 0.8}}]
SCANNER = [
    *SAFE,
    {"name": "gaussian-noise", "params": {"max_sd_hu": 150}},
    {"name": "kernel-smooth", "params": {"max_sigma_voxels": 1.0}},
    {"name": "kernel-sharpen", "params": {"probability": 0.3}},
    {"name": "hu-shift", "params": {"max_shift_hu": 15}},
]


def profile(
    work: Path,
    name: str,
    seed: int,
    patients: int,
    augmentations: list[dict[str, Any]],
    depends: list[str],
    hu_tolerance: float,
    epochs: int = 15,
    scanner: str = "siemens-smooth-standard-dose",
) -> Path:
    return site_profile(
        work,
        name,
        patients=patients,
        phantom={"scanner": scanner},
        seed=seed,
        split={"train": 0.75, "validation": 0.2, "test": 0.05},
        epochs=epochs,
        patience=6,
        augmentations=augmentations,
        task={"label_depends_on": depends, "hu_tolerance": hu_tolerance},
    )


HOME_SITE = {"scanner": "siemens-smooth-standard-dose"}
#: The other sites: GE's sharp lung kernel, water at +8 HU, at 1.5 and 0.3 mGy.
OTHER_SITES = {
    "sharp kernel, 1.5 mGy": {"scanner": "ge-sharp-low-dose"},
    "sharp kernel, 0.3 mGy": {"scanner": "ge-sharp-low-dose", "dose_mgy": 0.3},
}
SMALL_SIZES = (20, 40)
SMALL_SETS = (("none", [], 20), ("safe default set", SAFE, 20), ("unsafe HU shift", UNSAFE, 300))
SITE_NAMES = ["home", *OTHER_SITES]


def held_out_auroc(model_dir: Path, site: dict[str, Any], work: Path) -> float:
    """AUROC on 60 patients never seen in training (another phantom seed)."""
    from sklearn.metrics import roc_auc_score

    from medadapt.engine import get_plugin_host
    from medadapt.engine.models.model import load_model
    from medadapt.engine.validation.evaluate import predict_records
    from medadapt.plugins.phantom import Phantom

    loaded = load_model(model_dir, get_plugin_host().registry())
    source = Phantom.from_params({**site, "patients": 60, "seed": 99, "slices": 16})
    positive = loaded.card.classes[1]
    found = predict_records(loaded, positive, source, source.scan().records, work / "cache")
    return float(roc_auc_score(found.labels, found.scores))


def trained(work: Path, path: Path) -> Path:
    from medadapt.engine import get_plugin_host, load_profile, train

    host = get_plugin_host()
    registry = host.registry()
    out = work / "runs" / path.stem
    train(load_profile(path, registry), registry, host, out, quiet=True, cache_dir=work / "cache")
    return out / "model"


def run(quick: bool, work: Path) -> Section:
    """Both experiments, every seed; then the tables and what they show."""
    from medadapt.engine import ProfileError, get_plugin_host, load_profile

    small_seeds, seeds, epochs = (2, [1, 2], 2) if quick else (10, [1, 2, 3], 15)
    travelling = 40 if quick else 80  # patients at the site whose model travels
    #: Quick: the smaller size only (a smoke check of every code path, tests/test_benchmarks.py).
    sizes = SMALL_SIZES[:1] if quick else SMALL_SIZES
    honest = ["size", "shape", "texture", "absolute-hu"]
    small: dict[int, dict[str, list[float]]] = {
        n: {label: [] for label, _, _ in SMALL_SETS} for n in sizes
    }
    travel: dict[str, dict[str, list[float]]] = {
        "without": {site: [] for site in SITE_NAMES},
        "with scanner randomisation": {site: [] for site in SITE_NAMES},
    }
    refusal = ""
    try:
        load_profile(
            profile(work, "refused", 1, 40, UNSAFE, honest, 20), get_plugin_host().registry()
        )
    except ProfileError as exc:
        refusal = exc.issues[0].message
    for seed, patients in itertools.product(range(1, small_seeds + 1), sizes):
        for label, augs, tolerance in SMALL_SETS:
            name = f"{label.replace(' ', '-')}-{patients}"
            path = profile(work, name, seed, patients, augs, honest, tolerance, epochs)
            small[patients][label].append(held_out_auroc(trained(work, path), HOME_SITE, work))
    for seed in seeds:
        for label, augs in (("without", SAFE), ("with scanner randomisation", SCANNER)):
            name = label.replace(" ", "-")
            path = profile(work, name, seed, travelling, augs, ["size", "shape"], 20, epochs)
            model = trained(work, path)
            travel[label]["home"].append(held_out_auroc(model, HOME_SITE, work))
            for site, params in OTHER_SITES.items():
                travel[label][site].append(held_out_auroc(model, params, work))

    def fmt(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        each = ", ".join(f"{v:.3f}" for v in values)
        return f"{statistics.mean(values):.3f} ± {spread:.3f} ({each})"

    lines = [
        "ResNet-18 from scratch, 2D 48 x 48 patches in the soft-tissue window (level 40, "
        "width 400); AUROC on 60 held-out simulated patients. Mean ± standard deviation "
        "(each seed).",
        "",
        f"Small data: {' and '.join(map(str, sizes))} patients at the training site (smooth "
        "kernel, standard dose), "
        f"{small_seeds} seeds. Difference: against no augmentation, paired by seed.",
        "",
        "| patients | augmentation | held-out AUROC | difference |",
        "|---|---|---|---|",
        *[
            f"| {n} | {label} | {fmt(values)} | "
            + ("" if label == "none" else _paired(values, small[n]["none"]))
            + " |"
            for n in sizes
            for label, values in small[n].items()
        ],
        "",
        _small_finding(small),
        "",
        f'The profile check refuses the unsafe set for the honest task: "{refusal[:220]}..."',
        "",
        f"Scanner randomisation: {travelling} patients at the smooth-kernel (B30f), 12 mGy site, "
        f"{len(seeds)} seeds; scored there and at two sites with "
        "GE's sharp LUNG kernel whose water reads +8 HU, at 1.5 and 0.3 mGy. Scanner "
        "randomisation: the safe set plus Gaussian noise up to 150 HU, smoothing, sharpening "
        "and an HU shift up to 15 HU. Loss: home AUROC minus the other site's, mean over seeds.",
        "",
        "| training | site | AUROC | loss |",
        "|---|---|---|---|",
        *[
            f"| {label} | {site} | {fmt(v[site])} | "
            + ("" if site == "home" else f"{statistics.mean(_losses(v['home'], v[site])):+.3f}")
            + " |"
            for label, v in travel.items()
            for site in SITE_NAMES
        ],
        "",
        _travel_finding(travel),
    ]
    rows = [
        {"experiment": "small data", "patients": n, "augmentation": label, "seed": seed, "auroc": v}
        for n in sizes
        for label, values in small[n].items()
        for seed, v in enumerate(values, start=1)
    ]
    rows += [
        {"experiment": "scanner", "training": label, "site": site, "seed": seed, "auroc": v}
        for label, per_site in travel.items()
        for site, values in per_site.items()
        for seed, v in zip(seeds, values, strict=True)
    ]
    return Section(
        heading="Augmentation: safe, unsafe, and scanner randomisation",
        lines=lines,
        tables={"augmentation_effect": rows},
        command=".venv/bin/python benchmarks/augmentation_effect.py",
    )


def _paired(values: list[float], baseline: list[float]) -> str:
    differences = [a - b for a, b in zip(values, baseline, strict=True)]
    better = sum(d > 0 for d in differences)
    return (
        f"{statistics.mean(differences):+.3f} ± {statistics.stdev(differences):.3f} "
        f"(better in {better} of {len(differences)})"
    )


def _small_finding(small: dict[int, dict[str, list[float]]]) -> str:
    """The small-data result in words: a difference counts when it exceeds its spread."""
    sentences = []
    for n, results in small.items():
        for label in ("safe default set", "unsafe HU shift"):
            differences = [a - b for a, b in zip(results[label], results["none"], strict=True)]
            mean, error, sign = suite.paired(differences)
            verdict = {
                1: "helps",
                -1: "hurts",
                0: "makes no difference beyond seed-to-seed variation",
            }[sign]
            sentences.append(
                f"with {n} patients the {label} {verdict} ({mean:+.3f} AUROC, standard error "
                f"{error:.3f})"
            )
    return "Finding: " + "; ".join(sentences) + "."


def _losses(home: list[float], other: list[float]) -> list[float]:
    return [a - b for a, b in zip(home, other, strict=True)]


def _travel_finding(travel: dict[str, dict[str, list[float]]]) -> str:
    """What the table shows, worded from the numbers: a loss must exceed the seed spread."""
    sentences = []
    for site in OTHER_SITES:
        without = _losses(travel["without"]["home"], travel["without"][site])
        with_ = _losses(
            travel["with scanner randomisation"]["home"], travel["with scanner randomisation"][site]
        )
        spread = max(statistics.stdev(without), statistics.stdev(with_), 0.01)
        mean_without, mean_with = statistics.mean(without), statistics.mean(with_)
        if mean_without <= spread:
            verdict = (
                "no loss beyond seed-to-seed variation without randomisation, so this site "
                "cannot show whether randomisation reduces one (inconclusive)"
            )
        elif mean_without - mean_with > spread:
            verdict = f"randomisation reduces the loss from {mean_without:+.3f} to {mean_with:+.3f}"
        else:
            verdict = (
                f"the loss is {mean_without:+.3f} without and {mean_with:+.3f} with "
                "randomisation: no reduction beyond seed-to-seed variation"
            )
        sentences.append(f"At the {site} site: {verdict}.")
    return "Finding: " + " ".join(sentences)


if __name__ == "__main__":
    suite.main(["--only", "augmentation_effect", *sys.argv[1:]])
