"""Profiles of simulated hospitals, as the benchmarks write them.

Every benchmark site is the same task (benign or malignant nodules, labels that depend on
size and shape), ResNet-18 from scratch on 2D 48 x 48 patches resampled to 2 x 1 x 1 mm;
what differs is the scanner, the body region, the number of patients, the split and the
training budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: The soft-tissue window, in which nodule density is read.
SOFT_TISSUE = (40.0, 400.0)
#: Flips and small rotations: safe for a label that depends on size and shape.
SAFE_AUGMENTATIONS: list[dict[str, Any]] = [
    {"name": "random-flip", "params": {"axis": "anterior-posterior"}},
    {"name": "random-rotate", "params": {"max_degrees": 15}},
]


def site_profile(
    folder: Path,
    name: str,
    *,
    patients: int,
    phantom: dict[str, Any] | None = None,
    phantom_seed: int = 21,
    seed: int = 1,
    region: str = "chest",
    split: dict[str, float] | None = None,
    epochs: int = 12,
    patience: int | None = 5,
    window: tuple[float, float] = SOFT_TISSUE,
    augmentations: list[dict[str, Any]] | None = None,
    task: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """Write a simulated site's profile to ``folder`` and return its path.

    Args:
        phantom: the phantom source's parameters besides patients and seed (scanner, dose,
            body region of the simulated patients).
        phantom_seed: which simulated patients (the same seed, the same patients).
        seed: the profile's seed: split, initialisation, augmentation draws.
        region: the profile's declared body region.
        task: replaces keys of the task section (``label_depends_on``, ``hu_tolerance``).
        sections: further top-level sections (``adaptation``, ``acceptance``), as given.
    """
    document: dict[str, Any] = {
        "site": {"name": name},
        "intended_use": "benchmark on simulated patients",
        "body_region": region,
        "seed": seed,
        "task": {
            "classes": ["benign", "malignant"],
            "positive_class": "malignant",
            "label_depends_on": ["size", "shape"],
            **(task or {}),
        },
        "data": {
            "source": "phantom",
            "params": {
                "patients": patients,
                "seed": phantom_seed,
                "slices": 16,
                **(phantom or {}),
            },
            "split": split or {"train": 0.6, "validation": 0.2, "test": 0.2},
        },
        "preprocessing": {
            "window": {"level": window[0], "width": window[1]},
            "spacing_mm": [2.0, 1.0, 1.0],
            "patch_mode": "2d",
            "patch_size": [48, 48],
        },
        "augmentations": SAFE_AUGMENTATIONS if augmentations is None else augmentations,
        "backbone": {"name": "resnet18", "weights": "none"},
        "training": {"epochs": epochs, "batch_size": 32, "early_stopping_patience": patience},
        "acceptance": {"min_auroc": 0.8},
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name.replace(' ', '-').replace(',', '')}-{seed}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
