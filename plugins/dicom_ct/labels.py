"""Joining a label file to the volumes a scan found.

The label file is a CSV with a header row, one row per lesion:

=================  ==========================================================================
column             meaning
=================  ==========================================================================
``patient_id``     the PatientID in the DICOM files (pseudonymised on reading, never kept)
``series_uid``     optional: the SeriesInstanceUID, needed when a patient has several series
``study_uid``      optional: the StudyInstanceUID, to choose among a patient's studies
``label``          the class name
``x_mm`` ...       the lesion centre in patient coordinates: ``x_mm``, ``y_mm``, ``z_mm``
``slice`` ...      or as a voxel index: ``slice`` (0 = lowest position along the slice
                   normal), ``row``, ``column``
``lesion_id``      optional: a name for the lesion, kept with the sample
=================  ==========================================================================

Rows that match no volume, or that place a lesion outside it, are reported as rejections
that name the row, never silently dropped. So are rows that repeat another exactly, or
place the same lesion (same series, same centre within a voxel) a second time: the lesion
is counted once. Rows that give one lesion two different labels are contradictory: none of
them is kept, and each is reported with the others.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medadapt.engine import InvalidInputError, Pseudonymizer, Rejection
from medadapt.plugins.dicom_ct.series import Volume

_MM = ("x_mm", "y_mm", "z_mm")
_VOXEL = ("slice", "row", "column")


@dataclass(frozen=True)
class Lesion:
    """One labelled lesion (a label row, a SEG segment) joined to its volume.

    Attributes:
        source: the file that placed it (the label file, a SEG file).
        number: its row in the label file, or its segment number in the SEG file.
        attributes: what else is known of it, kept with the sample (a SEG's lesion size).
    """

    volume: Volume
    label: str
    centre: tuple[float, float, float]
    lesion_id: str | None
    source: Path
    number: int
    attributes: dict[str, float] = field(default_factory=dict)


def _read(label_file: Path, header_only: bool) -> tuple[set[str], list[dict[str, str]]]:
    """The label file's columns (stripped, lower case) and rows. Reads UTF-8 (with or without
    a byte-order mark) and UTF-16 with one (Excel's "Unicode text"), separated by commas,
    semicolons or tabs; with semicolons or tabs a decimal comma is read as a point."""
    try:
        raw = label_file.read_bytes()
    except FileNotFoundError:
        raise InvalidInputError(f"{label_file}: the label file does not exist") from None
    except OSError as exc:
        raise InvalidInputError(
            f"{label_file}: the label file cannot be read ({exc.strerror or exc})"
        ) from None
    text = _decode(label_file, raw)
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count) if first.strip() else ","
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        reader.fieldnames = _column_names(label_file, reader.fieldnames or [])
        columns = set(reader.fieldnames)
        rows = [] if header_only else list(reader)
    except csv.Error as exc:
        raise InvalidInputError(f"{label_file}: the label file cannot be read: {exc}") from None
    if delimiter != ",":
        for row in rows:
            for name in (*_MM, *_VOXEL):
                if row.get(name):
                    row[name] = row[name].replace(",", ".")
    return columns, rows


#: What a byte-order mark becomes when a file is read, or saved again, in the wrong
#: encoding (UTF-8's as Windows-1252 or Latin-1; UTF-16's as Latin-1), and the mark itself
#: where a second one follows the first.
_MANGLED_BOMS = ("\ufeff", "\u00ef\u00bb\u00bf", "\u00fe\u00ff", "\u00ff\u00fe")


def _column_names(label_file: Path, raw: list[str]) -> list[str]:
    """The header's names, stripped and in lower case; refused when one carries a mangled
    byte-order mark or when two name the same column (``label`` and ``Label `` alike):
    which of them the rows' values belong to cannot be known, and taking either silently
    could train on the wrong labels."""
    names = [name.strip().lower() for name in raw]
    for position, (name, original) in enumerate(zip(names, raw, strict=True), start=1):
        if any(mark in name for mark in _MANGLED_BOMS):
            raise InvalidInputError(
                f"{label_file}: column {position} of the header, {original!r}, holds a "
                "byte-order mark read in the wrong encoding (the file was saved again by a "
                "program that misread it); save the label file as CSV in UTF-8 (in Excel: "
                "'CSV UTF-8') and check the header"
            )
    positions: dict[str, list[int]] = defaultdict(list)
    for position, name in enumerate(names, start=1):
        if name:  # a spreadsheet's trailing empty columns name nothing
            positions[name].append(position)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if repeated:
        described = "; ".join(
            f"{name!r} in columns {', '.join(map(str, where))} "
            f"({', '.join(repr(raw[i - 1]) for i in where)})"
            for name, where in repeated.items()
        )
        raise InvalidInputError(
            f"{label_file}: the header names a column more than once: {described}; which "
            "one holds the values is ambiguous, so the file is refused: keep one column of "
            "each name"
        )
    return names


def _decode(label_file: Path, raw: bytes) -> str:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInputError(
            f"{label_file}: line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x}): save the "
            "label file as CSV in UTF-8 (in Excel: 'CSV UTF-8')"
        ) from None


def header(label_file: Path) -> set[str]:
    """The label file's columns (stripped, lower case).

    Raises:
        InvalidInputError: the file cannot be read.
    """
    return _read(label_file, header_only=True)[0]


def level_of(columns: set[str]) -> str:
    """``lesion`` when the columns place lesions, else ``series`` (whole series labelled)."""
    return "lesion" if set(_MM) <= columns or set(_VOXEL) <= columns else "series"


def columns_problem(
    label_file: Path, columns: set[str] | None = None, level: str = "lesion"
) -> str | None:
    """What the label file's header lacks (read from the file when ``columns`` is None),
    or None when it has every column the dicom-ct source needs at ``level``."""
    if columns is None:
        try:
            columns = header(label_file)
        except InvalidInputError as exc:
            return str(exc)
    missing = {"patient_id", "label"} - columns
    if missing:
        where = "" if level == "series" else f" and either {', '.join(_MM)} or {', '.join(_VOXEL)}"
        return (
            f"{label_file}: missing column(s) {', '.join(sorted(missing))}; expected "
            f"patient_id, label{where}"
        )
    if level == "lesion" and not (set(_MM) <= columns or set(_VOXEL) <= columns):
        return (
            f"{label_file}: no lesion location; expected the columns {', '.join(_MM)} "
            f"(patient mm) or {', '.join(_VOXEL)} (voxel index)"
        )
    return None


@dataclass(frozen=True)
class SeriesLabel:
    """One series and the label a label file gives it as a whole."""

    volume: Volume
    label: str
    row: int


def join_series_labels(
    label_file: Path, volumes: list[Volume], pseudonymizer: Pseudonymizer
) -> tuple[list[SeriesLabel], list[Rejection]]:
    """Match every row of a series-level label file (``patient_id``, ``label``, optional
    ``series_uid`` and ``study_uid``) to the series it labels: the one named, or every
    usable series of the patient (and study) when none is.

    A series labelled twice the same way is counted once; labelled two ways, by no row.

    Raises:
        InvalidInputError: the file cannot be read or lacks a required column.
    """
    columns, rows = _read(label_file, header_only=False)
    problem = columns_problem(label_file, columns, level="series")
    if problem:
        raise InvalidInputError(problem)
    rejections: list[Rejection] = []
    given: dict[str, list[tuple[int, str]]] = defaultdict(list)  # series -> (row, label)
    by_key = {volume.series_key: volume for volume in volumes}
    by_patient = _by_patient(volumes)
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        candidates, patient_key = _candidates(row, by_patient, pseudonymizer)
        label = (row.get("label") or "").strip()
        if not candidates:
            rejections.append(
                Rejection(
                    label_file,
                    f"row {number}: no usable series for patient {patient_key} with the "
                    "given study/series",
                )
            )
        elif not label:
            rejections.append(Rejection(label_file, f"row {number}: the label is empty"))
        else:
            for volume in candidates:
                given[volume.series_key].append((number, label))
    labelled: list[SeriesLabel] = []
    for key, entries in given.items():
        labels = sorted({label for _, label in entries})
        numbers = [number for number, _ in entries]
        if len(labels) > 1:
            rejections.extend(
                Rejection(
                    label_file,
                    f"row {number}: series {key} is labelled {' and '.join(labels)} in rows "
                    f"{', '.join(map(str, numbers))}; none is kept until the label file says "
                    "which",
                )
                for number in numbers
            )
            continue
        labelled.append(SeriesLabel(by_key[key], labels[0], numbers[0]))
        rejections.extend(
            Rejection(
                label_file,
                f"row {number}: labels series {key} again ({labels[0]}, as row "
                f"{numbers[0]}); counted once",
            )
            for number in numbers[1:]
        )
    return labelled, rejections


def _by_patient(volumes: list[Volume]) -> dict[str, list[Volume]]:
    grouped: dict[str, list[Volume]] = defaultdict(list)
    for volume in volumes:
        grouped[volume.patient_key].append(volume)
    return grouped


def _candidates(
    row: dict[str, str], by_patient: dict[str, list[Volume]], pseudonymizer: Pseudonymizer
) -> tuple[list[Volume], str]:
    """The usable series a row may mean (by patient, then study and series when given)."""
    patient_key = pseudonymizer.pseudonym("patient", (row.get("patient_id") or "").strip())
    candidates = list(by_patient.get(patient_key, []))
    for column, kind in (("study_uid", "study"), ("series_uid", "series")):
        wanted = (row.get(column) or "").strip()
        if wanted:
            key = pseudonymizer.pseudonym(kind, wanted)
            attribute = "study_key" if kind == "study" else "series_key"
            candidates = [v for v in candidates if getattr(v, attribute).split(".")[0] == key]
    return candidates, patient_key


def join_labels(
    label_file: Path, volumes: list[Volume], pseudonymizer: Pseudonymizer
) -> tuple[list[Lesion], list[Rejection]]:
    """Match every row of the label file to a volume.

    Raises:
        InvalidInputError: the file cannot be read or lacks a required column.
    """
    columns, rows = _read(label_file, header_only=False)
    problem = columns_problem(label_file, columns)
    if problem:
        raise InvalidInputError(problem)

    by_patient = _by_patient(volumes)
    lesions: list[Lesion] = []
    rejections: list[Rejection] = []
    first_of: dict[tuple[tuple[str, str], ...], int] = {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"row {number}"

        def reject(reason: str, where: str = where) -> None:
            rejections.append(Rejection(label_file, f"{where}: {reason}"))

        content = tuple(sorted((k, (v or "").strip()) for k, v in row.items() if k))
        if content in first_of:
            reject(f"repeats row {first_of[content]} exactly; counted once")
            continue
        first_of[content] = number

        candidates, patient_key = _candidates(row, by_patient, pseudonymizer)
        if not candidates:
            reject(f"no usable series for patient {patient_key} with the given study/series")
            continue
        if len(candidates) > 1:
            reject(
                f"patient {patient_key} has {len(candidates)} usable series; add series_uid "
                "to say which one the lesion is in"
            )
            continue
        volume = candidates[0]
        label = (row.get("label") or "").strip()
        if not label:
            reject("the label is empty")
            continue
        try:
            centre = _centre(row, volume)
        except ValueError as exc:
            reject(str(exc))
            continue
        if not all(-0.5 <= c <= n - 0.5 for c, n in zip(centre, volume.shape, strict=True)):
            reject(f"the lesion centre lies outside the series (voxel {_fmt(centre)})")
            continue
        lesion_id = (row.get("lesion_id") or "").strip() or None
        lesions.append(Lesion(volume, label, centre, lesion_id, label_file, number))
    return without_contradictions(lesions, rejections, "row", "the label file")


def without_contradictions(
    lesions: list[Lesion], rejections: list[Rejection], unit: str, authority: str
) -> tuple[list[Lesion], list[Rejection]]:
    """One sample per lesion: lesions placed twice (same series, same centre within a
    voxel) with one label are counted once; with different labels, none is kept, since
    either could be the mistake.

    Args:
        unit: what a lesion's number counts, for messages ("row", "segment").
        authority: what must say which label is right ("the label file").
    """
    groups: dict[tuple[str, tuple[int, int, int]], list[int]] = defaultdict(list)
    for index, lesion in enumerate(lesions):
        place = tuple(round(c) for c in lesion.centre)
        groups[(lesion.volume.series_key, place)].append(index)  # type: ignore[index]
    dropped: set[int] = set()

    def name(lesion: Lesion, of: Lesion) -> str:  # "row 5", or "segment 2 of seg.dcm"
        text = f"{unit} {lesion.number}"
        return text if lesion.source == of.source else f"{text} of {lesion.source.name}"

    for (_, place), members in groups.items():
        if len(members) < 2:
            continue
        labels = sorted({lesions[i].label for i in members})
        patient = lesions[members[0]].volume.patient_key
        if len(labels) > 1:
            for i in members:
                here = lesions[i]
                every = ", ".join(name(lesions[j], here).removeprefix(f"{unit} ") for j in members)
                others = ", ".join(
                    name(lesions[j], here).removeprefix(f"{unit} ") for j in members if j != i
                )
                rejections.append(
                    Rejection(
                        here.source,
                        f"{unit} {here.number}: the lesion of patient {patient} at voxel "
                        f"{place} is labelled {' and '.join(labels)} in {unit}s {every}; none "
                        f"is kept until {authority} says which (see {unit} {others})",
                    )
                )
            dropped.update(members)
        else:
            first = lesions[members[0]]
            for i in members[1:]:
                here = lesions[i]
                rejections.append(
                    Rejection(
                        here.source,
                        f"{unit} {here.number}: the same lesion as {name(first, here)} "
                        f"(patient {patient}, voxel {place}, {labels[0]}); counted once",
                    )
                )
            dropped.update(members[1:])
    kept = [lesion for index, lesion in enumerate(lesions) if index not in dropped]
    return kept, rejections


def _centre(row: dict[str, str], volume: Volume) -> tuple[float, float, float]:
    """The lesion centre a row gives, in mm or as a voxel index; a row that gives both
    must place the lesion in the same voxel both ways (either could be the mistake)."""
    given = [names for names in (_MM, _VOXEL) if all((row.get(c) or "").strip() for c in names)]
    if len(given) < 2:
        return _centre_from(row, volume, given[0] if given else _VOXEL)
    by_mm, by_index = (_centre_from(row, volume, names) for names in given)
    apart = max(abs(a - b) for a, b in zip(by_mm, by_index, strict=True))
    if apart > 1.0:
        raise ValueError(
            f"the lesion centre in mm ({', '.join(_MM)}) is voxel {_fmt(by_mm)}, and as a "
            f"voxel index ({', '.join(_VOXEL)}) it is {_fmt(by_index)}: {apart:.1f} voxels "
            "apart, so which one is meant cannot be known; give one of them"
        )
    return by_mm


def _centre_from(
    row: dict[str, str], volume: Volume, names: tuple[str, str, str]
) -> tuple[float, float, float]:
    try:
        values = [float(row[c]) for c in names]
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"the lesion location needs numbers in {', '.join(_MM)} or {', '.join(_VOXEL)}"
        ) from None
    if names == _MM:
        return volume.patient_mm_to_output_index(values)
    if volume.shear is not None:  # the index is a tilted slice's, as a viewer shows it
        row, column = volume.shear[min(max(round(values[0]), 0), len(volume.shear) - 1)]
        values = [values[0], values[1] + row, values[2] + column]
    if volume.heights is not None:  # the n-th slice stored, placed on the resampled grid
        between, last = volume.acquisition_spacing[0], len(volume.heights) - 1
        if values[0] < 0 or values[0] > last:  # outside: rejected below, wherever it lands
            height = values[0] * between if values[0] < 0 else volume.heights[-1]
            height += max(values[0] - last, 0.0) * between
        else:
            height = float(np.interp(values[0], np.arange(last + 1), volume.heights))
        values = [height / between, values[1], values[2]]
    return volume.to_output_index(values)


def _fmt(centre: tuple[float, float, float]) -> str:
    return "(" + ", ".join(f"{c:.1f}" for c in centre) + ")"
