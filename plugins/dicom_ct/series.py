"""Assembling file headers into volumes: grouping, splitting, geometric order, spacing.

Slices are ordered by projecting ImagePositionPatient on the slice normal (the cross
product of the two ImageOrientationPatient directions), never by file name. The volume is
then turned to one orientation for every scanner: array axes (z, y, x) run towards the
patient's head, back and left, so that a model sees the same anatomy the same way round.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.engine import InvalidInputError, Rejection
from medadapt.plugins.dicom_ct.headers import FileHeader, FrameHeader

#: Positions closer than this (mm) along the normal are the same position.
_SAME_POSITION_MM = 0.01
#: A step larger than this many times the usual spacing is a gap.
_GAP_FACTOR = 1.5
#: Steps differing from the usual spacing by more than this fraction are uneven.
_UNEVEN_FRACTION = 0.1
#: Slices whose in-plane offsets stay within this many pixels stack along their normal.
_SHEAR_PIXELS = 0.1
#: Slices within this fraction of the spacing of a regular grid lie on it; otherwise (a gap,
#: uneven spacing) the volume is resampled onto one along the slice normal.
_ON_GRID_FRACTION = 0.1
#: Fewer pixels than this along a row or a column make no CT image (real ones have
#: hundreds): such a series is listed as unusable, whatever the profile's patch.
MIN_PIXELS = 8

#: A gap up to this many times the spacing (three missing slices) is filled in by
#: interpolation; a wider one is not: interpolating across it would invent anatomy.
_FILLED_GAP_FACTOR = 4.0


@dataclass(frozen=True)
class SliceRef:
    """Where one slice's pixels are: a file, and the frame within it for multi-frame files."""

    path: Path
    frame: int | None


@dataclass
class Volume:
    """A volume ready to load: its slices in acquisition order and how to orient them.

    Attributes:
        slices: slices in ascending position along the slice normal.
        acquisition_spacing: (between slices, between rows, between columns) in mm.
        axes: for each output axis (z, y, x), the acquisition axis it comes from.
        flips: for each output axis, whether it runs against the acquisition axis.
        affine: 4x4 map from acquisition voxel index (slice, row, column) to patient mm.
    """

    series_key: str
    patient_key: str
    study_key: str
    rows: int
    columns: int
    slices: list[SliceRef]
    acquisition_spacing: tuple[float, float, float]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    affine: np.ndarray
    attributes: dict[str, str | float | None]
    warnings: list[str] = field(default_factory=list)
    #: For a tilted (sheared) series: each slice's in-plane offset from the first, in pixels
    #: (rows, columns), removed when the pixels are loaded; None when the slices stack.
    shear: list[tuple[float, float]] | None = None
    #: Each slice's height above the first along the normal, in mm, when the slices do not
    #: lie on a regular grid (a gap, uneven spacing): the pixels are then resampled along the
    #: normal onto a grid ``acquisition_spacing[0]`` apart. None when they lie on one.
    heights: list[float] | None = None

    @property
    def depth(self) -> int:
        """How many slices the loaded volume has: those of the regular grid it lies on."""
        if self.heights is None:
            return len(self.slices)
        return round(self.heights[-1] / self.acquisition_spacing[0]) + 1

    def slice_heights(self) -> list[float]:
        """Each slice's height above the first along the normal, in mm."""
        if self.heights is not None:
            return list(self.heights)
        return [index * self.acquisition_spacing[0] for index in range(len(self.slices))]

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (z, y, x) shape of the oriented volume."""
        acquisition = (self.depth, self.rows, self.columns)
        return tuple(acquisition[a] for a in self.axes)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """The (z, y, x) voxel size of the oriented volume, in mm."""
        return tuple(self.acquisition_spacing[a] for a in self.axes)  # type: ignore[return-value]

    def to_output_index(self, acquisition_index: Iterable[float]) -> tuple[float, float, float]:
        """Map an acquisition index (slice, row, column) to an oriented (z, y, x) index."""
        source = list(acquisition_index)
        acquisition_shape = (self.depth, self.rows, self.columns)
        out = []
        for axis, flip in zip(self.axes, self.flips, strict=True):
            value = source[axis]
            out.append(acquisition_shape[axis] - 1 - value if flip else value)
        return tuple(out)  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """Changes when any slice file changes (size or modification time) or moves."""
        parts = []
        for ref in self.slices:
            try:
                stat = ref.path.stat()
            except OSError as exc:
                raise InvalidInputError(
                    f"{ref.path}: the file cannot be read any more ({exc.strerror}); scan again"
                ) from None
            parts.append(f"{ref.path}|{ref.frame}|{stat.st_size}|{stat.st_mtime_ns}")
        parts.append(f"{self.axes}|{self.flips}|{self.shear}|{self.heights}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def to_locator(self) -> str:
        """Everything needed to load the volume again, in any process, as a string."""
        return json.dumps(
            {
                "series_key": self.series_key,
                "patient_key": self.patient_key,
                "study_key": self.study_key,
                "rows": self.rows,
                "columns": self.columns,
                "slices": [[str(s.path), s.frame] for s in self.slices],
                "acquisition_spacing": self.acquisition_spacing,
                "axes": self.axes,
                "flips": self.flips,
                "affine": self.affine.tolist(),
                "attributes": self.attributes,
                "shear": self.shear,
                "heights": self.heights,
            }
        )

    @classmethod
    def from_locator(cls, locator: str) -> Volume:
        """The volume :meth:`to_locator` described."""
        data = json.loads(locator)
        return cls(
            series_key=data["series_key"],
            patient_key=data["patient_key"],
            study_key=data["study_key"],
            rows=data["rows"],
            columns=data["columns"],
            slices=[SliceRef(Path(path), frame) for path, frame in data["slices"]],
            acquisition_spacing=tuple(data["acquisition_spacing"]),
            axes=tuple(data["axes"]),
            flips=tuple(data["flips"]),
            affine=np.asarray(data["affine"], dtype=float),
            attributes=data["attributes"],
            shear=[tuple(o) for o in data["shear"]] if data.get("shear") else None,
            heights=data.get("heights"),
        )

    def patient_mm_to_output_index(self, point_mm: Iterable[float]) -> tuple[float, float, float]:
        """Map a point in patient coordinates (mm) to an oriented (z, y, x) voxel index."""
        homogeneous = np.append(np.asarray(list(point_mm), dtype=float), 1.0)
        acquisition = np.linalg.solve(self.affine, homogeneous)[:3]
        return self.to_output_index(acquisition)


def assemble(headers: Iterable[FileHeader]) -> tuple[list[Volume], list[Rejection]]:
    """Group headers into series, split inconsistent ones, and order every volume.

    Returns:
        The volumes, and the slices that could not be placed in one, with reasons.
    """
    by_series: dict[str, list[tuple[FileHeader, FrameHeader]]] = defaultdict(list)
    for header in headers:
        for frame in header.frames:
            by_series[header.series_key].append((header, frame))
    volumes: list[Volume] = []
    rejections: list[Rejection] = []
    for series_key, members in sorted(by_series.items()):
        patients = {header.patient_key for header, _ in members}
        if len(patients) > 1:
            reason = (
                f"its SeriesInstanceUID is shared by files of {len(patients)} patients (a "
                "broken export, or an anonymiser that reused UIDs): the series belongs to no "
                "one patient, so a split by patient could not be trusted"
            )
            rejections.extend(Rejection(f.path, reason, h.image_key) for h, f in members)
            continue
        groups: dict[tuple, list[tuple[FileHeader, FrameHeader]]] = defaultdict(list)
        for header, frame in members:
            groups[_geometry_signature(header, frame)].append((header, frame))
        ordered_groups = sorted(groups.values(), key=len, reverse=True)
        for index, group in enumerate(ordered_groups):
            key = series_key if len(ordered_groups) == 1 else f"{series_key}.{index + 1}"
            volume, rejected = _build_volume(key, group)
            rejections.extend(rejected)
            if volume is None:
                continue
            if len(ordered_groups) > 1:
                volume.warnings.append(
                    f"the series mixes {len(ordered_groups)} image sizes or orientations; "
                    f"split into {len(ordered_groups)} volumes, this is part {index + 1}"
                )
            volumes.append(volume)
    return volumes, rejections


def _geometry_signature(header: FileHeader, frame: FrameHeader) -> tuple:
    orientation = tuple(round(v, 3) for v in frame.orientation) if frame.orientation else None
    spacing = tuple(round(v, 4) for v in frame.pixel_spacing)
    return (header.rows, header.columns, orientation, spacing)


def _build_volume(
    key: str, members: list[tuple[FileHeader, FrameHeader]]
) -> tuple[Volume | None, list[Rejection]]:
    first_header, first_frame = members[0]
    if min(first_header.rows, first_header.columns) < MIN_PIXELS:
        reason = (
            f"its images are {first_header.rows} x {first_header.columns} pixels: too small to "
            f"be a CT image (at least {MIN_PIXELS} x {MIN_PIXELS} expected; a scout, a "
            "thumbnail or a broken export?)"
        )
        return None, [Rejection(f.path, reason, h.image_key) for h, f in members]
    warnings: list[str] = []
    rejections: list[Rejection] = []
    for note in sorted({note for header, _ in members for note in header.notes}):
        warnings.append(f"some files: {note}")
    orientation = first_frame.orientation
    if orientation is not None and all(f.position is not None for _, f in members):
        row_dir = np.asarray(orientation[:3], dtype=float)
        col_dir = np.asarray(orientation[3:], dtype=float)
        normal = np.cross(row_dir, col_dir)
        heights = [float(np.dot(frame.position, normal)) for _, frame in members]
    elif all(f.instance_number is not None for _, f in members):
        warnings.append(
            "slice positions are missing; slices are ordered by InstanceNumber, which "
            "assumes the scanner numbered them in order"
        )
        row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
        normal = np.array([0.0, 0.0, 1.0])
        heights = [float(frame.instance_number) for _, frame in members]  # type: ignore[arg-type]
    else:
        reason = "neither slice positions nor InstanceNumber: the slices cannot be ordered"
        return None, [Rejection(frame.path, reason, header.image_key) for header, frame in members]

    order = sorted(
        range(len(members)),
        key=lambda i: (heights[i], members[i][1].instance_number or 0, str(members[i][1].path)),
    )
    kept: list[int] = []
    for i in order:
        if kept and abs(heights[i] - heights[kept[-1]]) < _SAME_POSITION_MM:
            duplicate_of = members[kept[-1]][1]
            header, frame = members[i]
            rejections.append(
                Rejection(
                    frame.path,
                    f"repeats the position of {duplicate_of.path.name} (a second cardiac "
                    "phase or a copy?); the first image at each position is kept",
                    header.image_key,
                )
            )
            continue
        kept.append(i)
    if len(rejections):
        warnings.append(
            f"{len(rejections)} image(s) repeat a position already in the series and were left out"
        )

    steps = np.diff([heights[i] for i in kept])
    positioned = orientation is not None and all(f.position is not None for _, f in members)
    relative: list[float] | None = None
    if len(steps):
        between = float(np.median(steps))
        above = [heights[i] - heights[kept[0]] for i in kept]
        off_grid = max(abs(h - k * between) for k, h in enumerate(above))
        fillable = float(steps.max()) <= _FILLED_GAP_FACTOR * between
        if positioned and fillable and off_grid > _ON_GRID_FRACTION * between:
            relative = above
        _describe_spacing(
            steps, between, warnings, resampled=relative is not None, positioned=positioned
        )
        if not fillable:
            warnings.append(
                f"a gap wider than {_FILLED_GAP_FACTOR:g} slices is not filled in: the slices "
                "either side of it are stacked as if adjacent, so distances across it are "
                "wrong (check the export for missing files, or label each part as its own "
                "series)"
            )
    else:
        fallback = first_header.spacing_between_slices or first_header.slice_thickness
        between = fallback or 1.0
        if not fallback:
            warnings.append("a single slice without SliceThickness: 1 mm is assumed between slices")

    row_spacing, column_spacing = first_frame.pixel_spacing
    shear = None
    if orientation is not None and all(f.position is not None for _, f in members):
        positions = np.asarray([members[i][1].position for i in kept], dtype=float)
        shear = _shear(positions, normal, row_dir, col_dir, (row_spacing, column_spacing))
        if isinstance(shear, str):
            reason = shear
            return None, [Rejection(f.path, reason, h.image_key) for h, f in members]
        if shear is not None:
            warnings.append(_tilt_text(shear, between, (row_spacing, column_spacing)))
    origin = np.asarray(members[kept[0]][1].position or (0.0, 0.0, 0.0), dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = normal * between
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * column_spacing
    affine[:3, 3] = origin
    axes, flips, oblique = _orientation(normal, col_dir, row_dir)
    if oblique:
        warnings.append(
            "the slices are oblique to every body axis; the volume keeps the scanner's axes"
        )
    volume = Volume(
        series_key=key,
        patient_key=first_header.patient_key,
        study_key=first_header.study_key,
        rows=first_header.rows,
        columns=first_header.columns,
        slices=[SliceRef(members[i][1].path, members[i][1].frame) for i in kept],
        acquisition_spacing=(between, row_spacing, column_spacing),
        axes=axes,
        flips=flips,
        affine=affine,
        attributes={**first_header.attributes, "pixel_spacing": round(float(row_spacing), 4)},
        warnings=warnings,
        shear=shear,
        heights=relative,
    )
    return volume, rejections


def _shear(
    positions: np.ndarray,
    normal: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    pixel_spacing: tuple[float, float],
) -> list[tuple[float, float]] | str | None:
    """Each slice's in-plane offset from the first, in pixels (rows, columns), when the
    slices do not stack along their normal (a gantry tilt); None when they do; a reason
    when their positions lie on no straight line (the series cannot be resampled)."""
    if len(positions) < 2:
        return None
    moved = positions - positions[0]
    heights = moved @ normal
    offsets = np.stack(
        [moved @ col_dir / pixel_spacing[0], moved @ row_dir / pixel_spacing[1]], axis=1
    )
    if np.abs(offsets).max() <= _SHEAR_PIXELS:
        return None
    # A tilt moves every slice in plane in proportion to its height along the normal.
    per_mm, *_ = np.linalg.lstsq(heights[:, None], offsets, rcond=None)
    residual = np.abs(offsets - heights[:, None] * per_mm).max()
    if residual > 1.0:
        return (
            f"the slice positions lie on no straight line (off by up to {residual:.1f} pixels "
            "from one): slices of different acquisitions mixed in one series? It cannot be "
            "resampled onto one grid"
        )
    return [(float(r), float(c)) for r, c in offsets]


def _tilt_text(
    shear: list[tuple[float, float]], between: float, pixel_spacing: tuple[float, float]
) -> str:
    last = np.asarray(shear[-1]) * np.asarray(pixel_spacing)
    height = between * (len(shear) - 1)
    angle = float(np.degrees(np.arctan2(np.linalg.norm(last), height)))
    return (
        f"the slices are sheared (gantry tilt of about {angle:.1f} degrees: the last slice "
        f"is {np.linalg.norm(last):.1f} mm off the first's normal); each slice is resampled "
        "in plane (linear interpolation) onto a grid that stacks along the normal"
    )


def _describe_spacing(
    steps: np.ndarray, between: float, warnings: list[str], *, resampled: bool, positioned: bool
) -> None:
    gaps = [(i, float(s)) for i, s in enumerate(steps) if s > _GAP_FACTOR * between]
    for i, step in gaps[:5]:
        warnings.append(
            f"gap of {step:.2f} mm between slices {i + 1} and {i + 2} (usual spacing "
            f"{between:.2f} mm): a missing slice?"
        )
    if len(gaps) > 5:
        warnings.append(f"{len(gaps) - 5} more gaps")
    regular = [float(s) for s in steps if s <= _GAP_FACTOR * between]
    if regular and max(abs(s - between) for s in regular) > _UNEVEN_FRACTION * between:
        warnings.append(
            f"uneven slice spacing: from {min(regular):.2f} to {max(regular):.2f} mm "
            f"(median {between:.2f} mm)"
        )
    if resampled:
        warnings.append(
            f"the slices lie on no regular grid; the volume is resampled onto one "
            f"{between:.2f} mm apart (linear interpolation along the slice normal between "
            "the two nearest slices, so a gap holds interpolated values)"
        )
    elif not positioned and (gaps or any(w.startswith("uneven") for w in warnings)):
        warnings.append(
            "the slice positions are unknown (ordered by InstanceNumber), so the slices are "
            "stacked as if evenly spaced"
        )


def _orientation(
    normal: np.ndarray, col_dir: np.ndarray, row_dir: np.ndarray
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], bool]:
    """Which acquisition axis becomes each output axis (towards head, back, left)."""
    directions = [normal, col_dir, row_dir]  # acquisition axes: slice, row, column
    # Patient axes in DICOM: x towards the left, y towards the back, z towards the head.
    # Output axes in order: z (head), y (back), x (left).
    dominant = [int(np.argmax(np.abs(d))) for d in directions]
    if sorted(dominant) != [0, 1, 2]:
        return (0, 1, 2), (False, False, False), True
    axes = tuple(dominant.index(patient_axis) for patient_axis in (2, 1, 0))
    flips = tuple(
        bool(directions[axis][patient_axis] < 0)
        for axis, patient_axis in zip(axes, (2, 1, 0), strict=True)
    )
    return axes, flips, False  # type: ignore[return-value]
