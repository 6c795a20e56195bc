"""Patient-level splits: no patient is ever in two of train, validation and test."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence

from medadapt.engine.contracts.components import SampleRecord, Split
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.profile import Profile, SplitFractions


def split_by_patient(
    records: Sequence[SampleRecord],
    fractions: SplitFractions,
    seed: int,
    positive_class: str | None = None,
) -> list[SampleRecord]:
    """Assign every record the split of its patient.

    Patients are shuffled with ``seed`` and dealt out by the fractions, separately for
    patients with and without a positive-class sample, so every split keeps about the same
    share of positive patients. The result is checked: a patient in two splits raises.

    Example:
        >>> records = [SampleRecord(f"p{i}", "s", "") for i in range(10)]
        >>> fractions = SplitFractions(train=0.6, validation=0.2, test=0.2)
        >>> splits = [r.split.value for r in split_by_patient(records, fractions, seed=0)]
        >>> {name: splits.count(name) for name in ("train", "validation", "test")}
        {'train': 6, 'validation': 2, 'test': 2}
    """
    by_patient: dict[str, list[SampleRecord]] = defaultdict(list)
    for record in records:
        by_patient[record.patient_key].append(record)
    groups: dict[bool, list[str]] = {True: [], False: []}
    for patient, own in sorted(by_patient.items()):
        groups[any(r.label == positive_class for r in own)].append(patient)
    assignment: dict[str, Split] = {}
    rng = random.Random(seed)
    for patients in groups.values():
        rng.shuffle(patients)
        counts = _counts(len(patients), fractions)
        start = 0
        for split, count in zip(Split, counts, strict=True):
            for patient in patients[start : start + count]:
                assignment[patient] = split
            start += count
    assigned = [dataclasses.replace(r, split=assignment[r.patient_key]) for r in records]
    check_patient_splits(assigned)
    return assigned


def site_split(records: Sequence[SampleRecord], profile: Profile) -> list[SampleRecord]:
    """Every record of a site with its patient's split, as every job sees it.

    All records are split, labelled or not, with the profile's fractions, seed and positive
    class, so that ``train``, ``adapt`` and ``evaluate`` agree on which patients are test
    patients even where some records have no label (and ``adapt`` may see no label at all).
    """
    assert profile.data is not None
    return split_by_patient(records, profile.data.split, profile.seed, profile.task.positive_class)


def keep_labels_per_class(
    records: Sequence[SampleRecord], per_class: int, seed: int
) -> list[SampleRecord]:
    """Keep the labels of ``per_class`` samples of each class, drawn with ``seed``; the other
    samples are returned unlabelled, in the same order.

    Example:
        >>> records = [SampleRecord(f"p{i}", "s", "", label="ab"[i % 2]) for i in range(6)]
        >>> [r.label for r in keep_labels_per_class(records, 1, seed=0)].count(None)
        4
    """
    rng = random.Random(seed)
    keep: set[int] = set()
    for label in sorted({r.label for r in records if r.label is not None}):
        indices = [i for i, r in enumerate(records) if r.label == label]
        keep.update(rng.sample(indices, min(per_class, len(indices))))
    return [r if i in keep else dataclasses.replace(r, label=None) for i, r in enumerate(records)]


def _counts(n: int, fractions: SplitFractions) -> tuple[int, int, int]:
    """Patients per split: largest remainders, so the counts add up to n."""
    wanted = [n * fractions.train, n * fractions.validation, n * fractions.test]
    counts = [int(w) for w in wanted]
    for index in sorted(range(3), key=lambda i: wanted[i] - counts[i], reverse=True):
        if sum(counts) == n:
            break
        counts[index] += 1
    return counts[0], counts[1], counts[2]


def check_patient_splits(records: Sequence[SampleRecord]) -> None:
    """Raise when any patient has records in more than one split."""
    seen: dict[str, Split | None] = {}
    for record in records:
        earlier = seen.setdefault(record.patient_key, record.split)
        if earlier != record.split:
            raise InvalidInputError(
                f"patient {record.patient_key} is in both the {earlier} and the {record.split} "
                "split; splits must be by patient"
            )
