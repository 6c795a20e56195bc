"""How a target site's data differs from the source site's, before any model is adapted.

Three views, each with its numbers:

1. Acquisition: the distribution of each acquisition attribute (manufacturer, model,
   kernel, kVp, slice thickness, pixel spacing, body part) over the series of each site.
2. Intensities: HU histograms of the same anatomical regions (the patches around the
   lesions, at the profile's resampled spacing), the Wasserstein distance between them in
   HU, and the median HU of each tissue band (air, lung, fat, soft tissue, bone), which
   shows calibration offsets.
3. Features (with a model): the model's features of both sites' patches; the maximum mean
   discrepancy (MMD, Gaussian kernel at the median distance) with a permutation p-value,
   and the AUROC of a domain classifier (logistic regression, cross-validated with patients
   kept within one fold) that tries to tell the sites apart. 0.5 means it cannot.

Only the train and validation splits are read: the test split stays unread for
``validate``. No identifying data is written: samples are only counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import scipy.stats
import torch

from medadapt.engine.contracts.components import SampleRecord, Split
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.datasets import PatchDataset
from medadapt.engine.data.samples import PatchLoader, SiteData, open_site_data
from medadapt.engine.data.splits import site_split
from medadapt.engine.models.card import profile_hash
from medadapt.engine.models.inference import batches, compute_device, infer
from medadapt.engine.models.model import LoadedModel, load_model, write_json_atomic
from medadapt.engine.models.runfolder import Provenance, claim_folder, profile_reads
from medadapt.engine.profile import Profile, SubgroupAttribute
from medadapt.engine.validation.job import attribute_text

SHIFT_JSON = "shift.json"
#: Every acquisition attribute a report can break results down by.
ATTRIBUTES: tuple[str, ...] = get_args(SubgroupAttribute)
#: HU bands whose median shows a calibration offset between sites.
TISSUES = {
    "air": (-1100.0, -900.0),
    "lung": (-900.0, -500.0),
    "fat": (-150.0, -50.0),
    "soft tissue": (-50.0, 100.0),
    "bone": (300.0, 2000.0),
}
HISTOGRAM_EDGES = np.linspace(-1100.0, 500.0, 65)
#: Verdict thresholds. With a model: the domain classifier's AUROC (0.5: the sites look
#: alike to the model). Without: the HU Wasserstein distance and differing acquisition.
LARGE_DOMAIN_AUROC, MODERATE_DOMAIN_AUROC = 0.8, 0.6
LARGE_HU_DISTANCE, MODERATE_HU_DISTANCE = 50.0, 15.0
P_VALUE = 0.05


def analyse_shift(
    target: Profile,
    source: Profile,
    registry: ComponentRegistry,
    model_dir: Path | None = None,
    out_dir: Path | None = None,
    max_samples: int = 300,
    permutations: int = 500,
    cache_dir: Path | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure how ``target``'s data differs from ``source``'s; write OUT/shift.json.

    Args:
        target, source: the two sites' profiles.
        registry: components.
        model_dir: a model whose features are compared (the source model, usually).
        out_dir: where shift.json goes (None: nowhere).
        max_samples: patches read per site (an even spread over the non-test samples).
        permutations: for the MMD p-value.
        cache_dir: the patch cache.
        overwrite: write into a folder made by something else.

    Raises:
        InvalidInputError: the data or the model are unusable, or ``out_dir`` is held by
            another job or was made by something else (without ``overwrite``).
    """
    loaded = load_model(model_dir, registry) if model_dir is not None else None
    if out_dir is None:
        return _analyse(target, source, registry, loaded, max_samples, permutations, cache_dir)
    model_hash = loaded.card.weights_sha256 if loaded is not None else None
    provenance = Provenance(
        "shift",
        {
            "profile": profile_hash(target),
            "source profile": profile_hash(source),
            "model": model_hash,
        },
        {"seed": target.seed},
        {"site": repr(target.site.name), "source site": repr(source.site.name)},
    )
    reads = [*profile_reads(target), *profile_reads(source), *([model_dir] if model_dir else [])]
    with claim_folder(out_dir, provenance, overwrite=overwrite, reads=reads):
        result = _analyse(target, source, registry, loaded, max_samples, permutations, cache_dir)
        write_json_atomic(out_dir / SHIFT_JSON, result)
    return result


def _analyse(
    target: Profile,
    source: Profile,
    registry: ComponentRegistry,
    loaded: LoadedModel | None,
    max_samples: int,
    permutations: int,
    cache_dir: Path | None,
) -> dict[str, Any]:
    sites = {
        "source": open_site_data(source, registry, cache_dir),
        "target": open_site_data(target, registry, cache_dir),
    }
    profiles = {"source": source, "target": target}
    chosen = {
        name: _spread(_not_test(site, profiles[name]), max_samples) for name, site in sites.items()
    }
    result: dict[str, Any] = {
        "sites": {name: profile.site.name for name, profile in profiles.items()},
        "samples": {name: len(records) for name, records in chosen.items()},
        "acquisition": _acquisition(sites),
    }
    result.update(_intensities(sites, chosen, seed=target.seed))
    if loaded is not None:
        device = compute_device(target.training.device)
        result["features"] = _features(
            loaded, sites, chosen, cache_dir, permutations, seed=target.seed, device=device
        )
    result["verdict"], result["explanation"] = _verdict(result)
    return result


def _not_test(site: SiteData, profile: Profile) -> list[SampleRecord]:
    return [r for r in site_split(site.records, profile) if r.split is not Split.TEST]


def _spread(records: Sequence[SampleRecord], count: int) -> list[SampleRecord]:
    """Up to ``count`` records evenly spaced through the list (deterministic)."""
    if len(records) <= count:
        return list(records)
    step = len(records) / count
    return [records[int(i * step)] for i in range(count)]


# --- acquisition ---------------------------------------------------------------------------


def _acquisition(sites: dict[str, SiteData]) -> list[dict[str, Any]]:
    """Per attribute: each site's values and how many series have each."""
    rows = []
    for attribute in ATTRIBUTES:
        counts = {}
        for name, site in sites.items():
            series = {r.series_key: r.attributes.get(attribute) for r in site.records}
            counts[name] = Counter(attribute_text(v) for v in series.values())
        rows.append(
            {
                "attribute": attribute,
                "source": _describe(counts["source"]),
                "target": _describe(counts["target"]),
                "source_counts": dict(counts["source"]),
                "target_counts": dict(counts["target"]),
                "differs": set(counts["source"]) != set(counts["target"]),
            }
        )
    return rows


def _describe(counts: Counter[str]) -> str:
    total = sum(counts.values())
    return ", ".join(f"{value} ({n / total:.0%})" for value, n in counts.most_common())


# --- intensities ---------------------------------------------------------------------------


def _intensities(
    sites: dict[str, SiteData], chosen: dict[str, list[SampleRecord]], seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    voxels = {}
    for name, site in sites.items():
        values = np.concatenate(
            [np.asarray(site.loader.patch_hu(r), dtype=np.float32).ravel() for r in chosen[name]]
        )
        # A fixed-size random subset keeps the distance affordable on large sites.
        voxels[name] = rng.choice(values, size=min(len(values), 200_000), replace=False)
    histograms = {
        name: (np.histogram(np.clip(v, -1100, 500), HISTOGRAM_EDGES)[0] / len(v)).tolist()
        for name, v in voxels.items()
    }
    tissues = []
    for tissue, (low, high) in TISSUES.items():
        medians = {}
        for name, v in voxels.items():
            inside = v[(v >= low) & (v < high)]
            medians[name] = float(np.median(inside)) if len(inside) >= 100 else None
        difference = (
            None if None in medians.values() else medians["target"] - medians["source"]  # type: ignore[operator]
        )
        tissues.append(
            {"tissue": tissue, "range_hu": [low, high], **medians, "difference": difference}
        )
    return {
        "hu_histograms": {"edges": HISTOGRAM_EDGES.tolist(), **histograms},
        "hu_wasserstein": float(
            scipy.stats.wasserstein_distance(voxels["source"], voxels["target"])
        ),
        "tissue_medians_hu": tissues,
    }


# --- features ------------------------------------------------------------------------------


@torch.no_grad()
def _features(
    loaded: LoadedModel,
    sites: dict[str, SiteData],
    chosen: dict[str, list[SampleRecord]],
    cache_dir: Path | None,
    permutations: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    spec = loaded.card.preprocessing
    model = loaded.model.to(device).eval()
    features, groups = [], []
    for name, site in sites.items():
        loader = PatchLoader(site.source, spec, cache_dir)
        data = PatchDataset(loader, chosen[name], list(loaded.card.classes))
        inferred = infer(
            model,
            batches(data),
            probabilities=False,
            features=True,
            prepare=lambda patches: patches.to(device),
        )
        assert inferred.features is not None
        features.append(inferred.features)
        groups += [f"{name}/{r.patient_key}" for r in chosen[name]]
    mmd, p_value = mmd_permutation_test(features[0], features[1], permutations, seed)
    return {
        "model_site": loaded.card.site,
        "mmd": mmd,
        "mmd_p_value": p_value,
        "mmd_permutations": permutations,
        "domain_classifier_auroc": domain_classifier_auroc(features[0], features[1], groups),
    }


def mmd_permutation_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0
) -> tuple[float, float]:
    """Squared MMD between two samples (Gaussian kernel, bandwidth the median pairwise
    distance), and the permutation p-value: the share of random relabellings of the pooled
    samples whose MMD is at least the observed one (with the observed one counted).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> same = mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), 99)
        >>> moved = mmd_permutation_test(rng.normal(size=(40, 3)), rng.normal(2, size=(40, 3)), 99)
        >>> same[1] > 0.05, moved[1] < 0.05
        (True, True)
    """
    pooled = np.concatenate([x, y]).astype(np.float64)
    squared = np.sum((pooled[:, None, :] - pooled[None, :, :]) ** 2, axis=-1)
    positive = squared[squared > 0]
    bandwidth = float(np.median(positive)) if len(positive) else 1.0
    kernel = np.exp(-squared / bandwidth)
    n = len(x)

    def statistic(order: np.ndarray) -> float:
        k = kernel[np.ix_(order, order)]
        return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())

    identity = np.arange(len(pooled))
    observed = statistic(identity)
    rng = np.random.default_rng(seed)
    at_least = sum(statistic(rng.permutation(len(pooled))) >= observed for _ in range(permutations))
    return observed, (at_least + 1) / (permutations + 1)


def domain_classifier_auroc(x: np.ndarray, y: np.ndarray, groups: Sequence[str]) -> float | None:
    """How well a logistic regression tells the two samples apart, cross-validated.

    Five folds that keep each patient's samples together (a patient's lesions look alike,
    so splitting them would flatter the classifier); the AUROC of the out-of-fold
    probabilities. 0.5: indistinguishable; 1.0: always told apart. None with fewer than
    two patients per site.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([x, y])
    labels = np.concatenate([np.zeros(len(x)), np.ones(len(y))])
    folds = min(5, len(set(groups[: len(x)])), len(set(groups[len(x) :])))
    if folds < 2:
        return None
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = GroupKFold(n_splits=folds)
    # Groups are passed the classic way, which scikit-learn refuses while its metadata
    # routing is on; a library in the same process may have switched it on (SKADA does
    # when it is imported).
    with sklearn.config_context(enable_metadata_routing=False):
        probabilities = cross_val_predict(
            classifier, features, labels, groups=list(groups), cv=splitter, method="predict_proba"
        )[:, 1]
    return float(roc_auc_score(labels, probabilities))


# --- verdict -------------------------------------------------------------------------------


def _verdict(result: dict[str, Any]) -> tuple[str, str]:
    """none / moderate / large, and the numbers behind it in a sentence."""
    differing = [
        row["attribute"].replace("_", " ") for row in result["acquisition"] if row["differs"]
    ]
    distance = result["hu_wasserstein"]
    parts = [
        "acquisition differs in " + ", ".join(differing)
        if differing
        else "acquisition attributes are the same",
        f"HU distributions around the lesions differ by {distance:.0f} HU (Wasserstein)",
    ]
    offsets = [
        t
        for t in result["tissue_medians_hu"]
        if t["difference"] is not None and abs(t["difference"]) >= 5
    ]
    if offsets:
        parts.append(
            "median HU moves by "
            + ", ".join(f"{t['difference']:+.0f} in {t['tissue']}" for t in offsets)
        )
    features = result.get("features")
    if features and features["domain_classifier_auroc"] is not None:
        auroc = features["domain_classifier_auroc"]
        p = features["mmd_p_value"]
        parts.append(
            f"the model's features tell the sites apart with AUROC {auroc:.2f} "
            f"(0.5: not at all), MMD p-value {p:.3f}"
        )
        if auroc >= LARGE_DOMAIN_AUROC:
            verdict = "large"
        elif auroc >= MODERATE_DOMAIN_AUROC or p < P_VALUE:
            verdict = "moderate"
        else:
            verdict = "none"
    elif distance >= LARGE_HU_DISTANCE:
        verdict = "large"
    elif distance >= MODERATE_HU_DISTANCE or differing:
        verdict = "moderate"
    else:
        verdict = "none"
    return verdict, "; ".join(parts) + "."


def describe_thresholds() -> str:
    """The verdict rule in words (for the command's help and docs)."""
    return (
        f"with a model: large when the domain classifier's AUROC is at least "
        f"{LARGE_DOMAIN_AUROC}, moderate when at least {MODERATE_DOMAIN_AUROC} or the MMD "
        f"p-value is below {P_VALUE}, else none; without: large when the HU Wasserstein "
        f"distance is at least {LARGE_HU_DISTANCE:g} HU, moderate when at least "
        f"{MODERATE_HU_DISTANCE:g} HU or an acquisition attribute differs, else none"
    )
