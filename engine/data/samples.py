"""From a sample record to the patch a model sees, with pixels and patches cached on disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.engine.contracts.components import (
    DataSource,
    Image,
    Rejection,
    SampleRecord,
)
from medadapt.engine.contracts.errors import InvalidInputError
from medadapt.engine.contracts.registry import ComponentRegistry
from medadapt.engine.data.cache import ArrayCache, cache_key, default_cache_dir
from medadapt.engine.data.patches import preprocessing_key, sample_patch_hu, window
from medadapt.engine.data.pseudonym import data_paths
from medadapt.engine.profile import Preprocessing, Profile

log = logging.getLogger(__name__)
#: How many of a site's unused inputs a job names in its warning (``inspect`` lists all files).
SHOWN_REJECTIONS = 10

#: Bump when the way volumes or patches are computed changes, to retire old cache entries.
CACHE_FORMAT = 2


@dataclass(frozen=True)
class Sample:
    """One preprocessed sample: the patch and what is known about it."""

    patch: np.ndarray
    label: str | None
    patient_key: str
    attributes: Mapping[str, str | float | int | None]


#: The most memory a :class:`PatchLoader` keeps patches in (beyond it, they are read again).
KEPT_PATCH_BYTES = 512 * 2**20


class PatchLoader:
    """Turns records into windowed patches, caching volumes and patches.

    A volume is cached under the data source's fingerprint of its files (which changes
    when a file changes); a patch under that fingerprint, its centre and the profile's
    preprocessing. Sources that give no fingerprint are never cached. A loader takes each
    volume's fingerprint once: files are expected to stay as they are during a run.

    A loader also keeps each patch it made or read in memory, up to
    :data:`KEPT_PATCH_BYTES`, so that every epoch of every run of a job after the first reads
    no file (a read from the disk cache cost about a millisecond a patch, as much as
    augmenting it); beyond that budget patches are read again when asked for, and memory
    stops growing with the number of samples.

    Args:
        source: the data source the records came from.
        preprocessing: the profile's preprocessing section.
        cache_dir: the cache folder; None for the default, see
            :func:`~medadapt.engine.data.cache.default_cache_dir`.
    """

    def __init__(
        self,
        source: DataSource,
        preprocessing: Preprocessing,
        cache_dir: Path | None = None,
    ) -> None:
        root = cache_dir or default_cache_dir()
        self.source = source
        self.preprocessing = preprocessing
        self._volumes = ArrayCache(root, "volumes")
        self._patches = ArrayCache(root, "patches")
        self._fingerprints: dict[str, str | None] = {}
        self._preprocessing_key = preprocessing_key(preprocessing)
        self._kept: dict[tuple[str, tuple[float, ...] | None], np.ndarray] = {}
        self._kept_bytes = 0

    def _fingerprint(self, record: SampleRecord) -> str | None:
        if record.locator not in self._fingerprints:
            self._fingerprints[record.locator] = self.source.fingerprint(record)
        return self._fingerprints[record.locator]

    def volume(self, record: SampleRecord) -> Image:
        """The record's volume in HU, from the cache when its files have not changed."""
        fingerprint = self._fingerprint(record)
        if fingerprint is None:
            return self.source.load(record)
        key = cache_key("volume", CACHE_FORMAT, self.source.name, fingerprint)
        hu = self._volumes.get(key)
        spacing = self._volumes.get(key + "-spacing")
        if hu is None or spacing is None:
            image = self.source.load(record)
            self._volumes.put(key, image.hu)
            self._volumes.put(key + "-spacing", np.asarray(image.spacing_mm, dtype=np.float64))
            return image
        return Image(hu=hu, spacing_mm=tuple(float(s) for s in spacing))

    def patch_hu(self, record: SampleRecord) -> np.ndarray:
        """The channel-first patch around the record's centre, in HU, before the window
        (read-only: copy it to change it)."""
        where = (record.locator, record.centre)
        kept = self._kept.get(where)
        if kept is not None:
            return kept
        patch = np.array(self._patch_hu(record))  # in memory, not a view of a cache file
        patch.flags.writeable = False
        if self._kept_bytes + patch.nbytes <= KEPT_PATCH_BYTES:
            self._kept[where] = patch
            self._kept_bytes += patch.nbytes
        return patch

    def _patch_hu(self, record: SampleRecord) -> np.ndarray:
        fingerprint = self._fingerprint(record)
        if fingerprint is None:
            return sample_patch_hu(self.source.load(record), record.centre, self.preprocessing)
        key = cache_key(
            "patch",
            CACHE_FORMAT,
            self.source.name,
            fingerprint,
            record.centre,
            self._preprocessing_key,
        )
        return self._patches.get_or_compute(
            key, lambda: sample_patch_hu(self.volume(record), record.centre, self.preprocessing)
        )

    def window(self, hu: np.ndarray) -> np.ndarray:
        """The profile's HU window: values in [0, 1]."""
        return window(hu, self.preprocessing.window.level, self.preprocessing.window.width)

    def patch(self, record: SampleRecord) -> np.ndarray:
        """The windowed, channel-first patch around the record's centre."""
        return self.window(np.asarray(self.patch_hu(record)))

    def sample(self, record: SampleRecord) -> Sample:
        """The patch with the record's label and acquisition attributes."""
        return Sample(
            patch=np.asarray(self.patch(record)),
            label=record.label,
            patient_key=record.patient_key,
            attributes=dict(record.attributes),
        )


@dataclass(frozen=True)
class SiteData:
    """A site's data as its profile describes it: the source, what it found, the patches."""

    source: DataSource
    records: list[SampleRecord]
    rejections: list[Rejection]
    loader: PatchLoader
    warnings: list[str] = field(default_factory=list)


def open_site_data(
    profile: Profile, registry: ComponentRegistry, cache_dir: Path | None = None
) -> SiteData:
    """Scan the data a profile names and get ready to load its patches.

    Raises:
        InvalidInputError: the profile has no ``data`` section, or the source cannot read
            what it was pointed at.
    """
    if profile.data is None:
        raise InvalidInputError(
            f"the profile of {profile.site.name!r} has no 'data' section: say where the images "
            "are (data.source and data.params)"
        )
    treat_as_data(profile)
    source = registry.build(
        DataSource, profile.data.source, profile.data.params, base_dir=profile.base_dir
    )
    if profile.task.level == "lesion":
        found = source.scan(label_file=profile.data.label_file)
    elif profile.task.level in source.label_levels:
        found = source.scan(label_file=profile.data.label_file, level=profile.task.level)  # type: ignore[call-arg]
    else:
        raise InvalidInputError(
            f"the data source {source.name!r} reads {', '.join(sorted(source.label_levels))}"
            f"-level labels only, and the profile's task.level is {profile.task.level}"
        )
    if found.rejections:
        log.warning("%s", rejections_text(profile.site.name, found.rejections))
    for warning in found.warnings[:SHOWN_REJECTIONS]:
        log.warning("%s: %s", profile.site.name, warning)
    if len(found.warnings) > SHOWN_REJECTIONS:
        log.warning(
            "%s: %d more warnings (medadapt inspect lists them all)",
            profile.site.name,
            len(found.warnings) - SHOWN_REJECTIONS,
        )
    _check_labels(found.records, profile)
    loader = PatchLoader(source, profile.preprocessing, cache_dir)
    records, too_small = holding_the_patch(found.records, profile.preprocessing)
    if too_small:
        log.warning("%s", rejections_text(profile.site.name, too_small))
    rejections = list(found.rejections) + too_small
    return SiteData(source, records, rejections, loader, list(found.warnings))


def _check_labels(records: Sequence[SampleRecord], profile: Profile) -> None:
    """Refuse labels that are not among ``task.classes``: a job that left their samples
    out would measure, or train on, another set than the site labelled, without a word
    (``Malignant`` for ``malignant`` in some rows of a label file, say)."""
    classes = profile.task.classes
    unknown = sorted({r.label for r in records if r.label is not None} - set(classes))
    if not unknown:
        return
    by_case = {c.casefold(): c for c in classes}
    hints = [f"{u!r} is {by_case[u.casefold()]!r} in another case" for u in unknown
             if u.casefold() in by_case]  # fmt: skip
    where = f" ({profile.data.label_file})" if profile.data and profile.data.label_file else ""
    raise InvalidInputError(
        f"{profile.site.name}: the data{where} have labels {', '.join(map(repr, unknown))} "
        f"that are not in task.classes {classes}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + "; fix the label file or the profile"
    )


def treat_as_data(profile: Profile) -> None:
    """Every folder the profile's data section names is data from now on: paths inside it
    are pseudonymised in what this process writes to files (see ``PathScrubber``)."""
    if profile.data is not None:
        treat_as_data_folders(profile.data.params, profile.base_dir, profile.data.label_file)


def treat_as_data_folders(
    params: Mapping[str, object], base: Path | None, label_file: str | Path | None = None
) -> None:
    """The folders among a data section's ``params`` are data (see :func:`treat_as_data`).
    A folder that does not exist counts too, when it is written as a path: the message
    that says it is missing names it."""
    base = base or Path.cwd()
    keep = [base / label_file] if label_file else []
    for value in params.values():
        if not isinstance(value, str | Path) or not str(value):
            continue
        path = base / value
        if path.is_dir() or (os.sep in str(value) and not path.is_file()):
            data_paths.add(path, keep=keep)


#: The least share of the patch's reach, along each axis it spans, that an image must
#: cover. A lesion near a border is padded with air and is still a sample; an image shorter
#: than half the patch makes more air than image of every patch. (A series-level volume
#: somewhat shorter than its patch, 15 mm of slices for 24, is an ordinary case.)
MIN_PATCH_COVERAGE = 0.5


def holding_the_patch(
    records: Sequence[SampleRecord], preprocessing: Preprocessing
) -> tuple[list[SampleRecord], list[Rejection]]:
    """The records whose image can hold the profile's patch, and a rejection (named by
    the series' pseudonym) for each series that cannot: along an axis the patch spans, the
    image covers less than :data:`MIN_PATCH_COVERAGE` of the patch, so most of every patch
    would be the air put outside the image. Records whose source does not give their
    geometry are kept.

    Example:
        >>> p = Preprocessing(window={"level": 40, "width": 400}, spacing_mm=[2.0, 1.0, 1.0],
        ...                   patch_mode="2d", patch_size=[48, 48])
        >>> tiny = SampleRecord("p", "series-1", "", shape=(12, 1, 1), spacing_mm=(2, 1, 1))
        >>> kept, refused = holding_the_patch([tiny], p)
        >>> print(refused[0].path, refused[0].reason)
        series-1 the image is 1 x 1 pixels (1 x 1 mm) in 12 slices (24 mm); the profile's \
patch needs 48 x 48 mm (at least half of it): too small to use
    """
    kept: list[SampleRecord] = []
    refused: dict[str, Rejection] = {}
    for record in records:
        if record.shape is None or record.spacing_mm is None:
            kept.append(record)
            continue
        own = [count * size for count, size in zip(record.shape, record.spacing_mm, strict=True)]
        needed = _patch_extent_mm(preprocessing, record.spacing_mm)
        if all(n is None or o >= n * MIN_PATCH_COVERAGE for o, n in zip(own, needed, strict=True)):
            kept.append(record)
            continue
        depth = "" if needed[0] is None else f" and {needed[0]:g} mm of slices"
        z, y, x = record.shape
        reason = (
            f"the image is {y} x {x} pixels ({own[1]:g} x {own[2]:g} mm) in {z} slice"
            f"{'s' if z != 1 else ''} ({own[0]:g} mm); the profile's patch needs "
            f"{needed[1]:g} x {needed[2]:g} mm{depth} (at least half of it): too small to use"
        )
        refused.setdefault(record.series_key, Rejection(Path(record.series_key), reason))
    return kept, list(refused.values())


def _patch_extent_mm(
    preprocessing: Preprocessing, native_mm: tuple[float, float, float]
) -> tuple[float | None, float, float]:
    """How far the patch reaches along (z, y, x), in mm; None along z for a 2D patch."""
    spacing = preprocessing.spacing_mm or native_mm
    rows, columns = preprocessing.patch_size[-2:]
    depth: int | None = None
    if preprocessing.patch_mode == "3d":
        depth = preprocessing.patch_size[0]
    elif preprocessing.slices is not None:
        depth = preprocessing.slices
    elif preprocessing.patch_mode == "2.5d":
        depth = 3
    return (
        None if depth is None else depth * spacing[0],
        rows * spacing[1],
        columns * spacing[2],
    )


def rejections_text(site: str, rejections: list[Rejection]) -> str:
    """What a job says about a site's unused inputs: how many, and the first ones with why.

    Example:
        >>> print(rejections_text("B", [Rejection(Path("labels.csv"), "row 2: no label")]))
        B: 1 input not used (files, or rows of the label file):
          labels.csv: row 2: no label
    """
    count = len(rejections)
    plural = "s" if count > 1 else ""
    lines = [f"{site}: {count} input{plural} not used (files, or rows of the label file):"]
    lines += [f"  {r.path}: {r.reason}" for r in rejections[:SHOWN_REJECTIONS]]
    if count > SHOWN_REJECTIONS:
        lines.append(f"  and {count - SHOWN_REJECTIONS} more; `medadapt inspect` lists every file")
    return "\n".join(lines)
