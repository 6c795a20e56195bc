"""Lesions from DICOM SEG files: the annotations a viewer saves, read through highdicom.

A radiologist who marks lesions in a viewer (3D Slicer, OHIF, a PACS workstation) saves a
DICOM Segmentation: one segment per lesion, its voxels, and a label. The dicom-ct source
reads each SEG file of an export as labels, when the profile names no label file:

- the SEG is matched to its CT series by the SeriesInstanceUID it references
  (ReferencedSeriesSequence), and must belong to the same patient;
- one segment is one lesion: its centre is the centroid of its voxels, in patient
  coordinates, placed in the series as a label file's ``x_mm``, ``y_mm``, ``z_mm`` would be;
  its size (volume in mm3, and the diameter of a sphere of that volume) is kept with the
  sample, and its lesion_id is "segment N of" the SEG's pseudonym (never its TrackingID,
  free text that may name the patient);
- its class comes from the segment label, through ``data.params.segment_labels`` when the
  profile maps labels to classes, else the label itself;
- a SEG that matches no usable series, a segment with no label, an empty segment, or a
  label the map does not name, is a rejection with its reason, never a silent drop.

Identifiers leave this module only as keyed pseudonyms, as everywhere in the source.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from medadapt.engine import Rejection
from medadapt.plugins.dicom_ct.headers import SegmentationFile
from medadapt.plugins.dicom_ct.labels import Lesion, without_contradictions
from medadapt.plugins.dicom_ct.series import Volume


def join_segmentations(
    files: Sequence[SegmentationFile],
    volumes: Sequence[Volume],
    segment_labels: Mapping[str, str] | None = None,
) -> tuple[list[Lesion], list[Rejection]]:
    """Every segment of every SEG file, as a lesion of the series it was drawn on.

    Args:
        files: the SEG files a scan found.
        volumes: the usable series of the same scan.
        segment_labels: segment label to class (case and surrounding spaces ignored);
            None or empty: a segment's label is its class.
    """
    by_series: dict[str, list[Volume]] = defaultdict(list)
    for volume in volumes:
        by_series[volume.series_key.split(".")[0]].append(volume)
    wanted = {key.strip().lower(): value for key, value in (segment_labels or {}).items()}
    lesions: list[Lesion] = []
    rejections: list[Rejection] = []
    for file in files:
        matches = [v for key in file.series_keys for v in by_series.get(key, [])]
        if not matches:
            rejections.append(
                Rejection(
                    file.path,
                    f"a DICOM SEG drawn on series {', '.join(file.series_keys)}, which is not "
                    "among the usable series of this export (its CT is missing or was "
                    "rejected); its lesions are not used",
                    file.image_key,
                )
            )
            continue
        if len(matches) > 1:
            rejections.append(
                Rejection(
                    file.path,
                    f"a DICOM SEG drawn on {len(matches)} usable series "
                    f"({', '.join(v.series_key for v in matches)}); one SEG per series is read",
                    file.image_key,
                )
            )
            continue
        volume = matches[0]
        if volume.patient_key != file.patient_key:
            rejections.append(
                Rejection(
                    file.path,
                    f"a DICOM SEG of patient {file.patient_key} drawn on series "
                    f"{volume.series_key} of patient {volume.patient_key}: one of the two is "
                    "mislabelled; its lesions are not used",
                    file.image_key,
                )
            )
            continue
        found, problems = _segments(file, volume, wanted)
        lesions.extend(found)
        rejections.extend(problems)
    return without_contradictions(lesions, rejections, "segment", "the segmentations")


def _segments(
    file: SegmentationFile, volume: Volume, wanted: Mapping[str, str]
) -> tuple[list[Lesion], list[Rejection]]:
    import highdicom

    def reject(reason: str) -> Rejection:
        return Rejection(file.path, reason, file.image_key)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom and pydicom warn with element values
        try:
            seg = highdicom.seg.segread(file.path)
        except Exception as exc:
            return [], [reject(f"cannot be read as a DICOM SEG ({type(exc).__name__})")]
        lesions: list[Lesion] = []
        rejections: list[Rejection] = []
        for number in seg.get_segment_numbers():
            description = seg.get_segment_description(number)
            label = str(description.segment_label or "").strip()
            if not label:
                rejections.append(
                    reject(f"segment {number}: no segment label, which gives the lesion's class")
                )
                continue
            if wanted and label.lower() not in wanted:
                rejections.append(
                    reject(
                        f"segment {number}: the label {label!r} is not in "
                        f"data.params.segment_labels ({', '.join(sorted(wanted))})"
                    )
                )
                continue
            try:
                mask = seg.get_volume(segment_numbers=[number])
            except Exception as exc:
                rejections.append(
                    reject(
                        f"segment {number}: its frames do not form a volume "
                        f"({type(exc).__name__}: {str(exc)[:120]})"
                    )
                )
                continue
            voxels = np.argwhere(np.asarray(mask.array).reshape(mask.array.shape[:3]) >= 0.5)
            if len(voxels) == 0:
                rejections.append(reject(f"segment {number}: empty (no voxel is marked)"))
                continue
            affine = np.asarray(mask.affine, dtype=float)
            centre_mm = (affine @ np.append(voxels.mean(axis=0), 1.0))[:3]
            centre = volume.patient_mm_to_output_index(centre_mm)
            if not all(-0.5 <= c <= n - 0.5 for c, n in zip(centre, volume.shape, strict=True)):
                rejections.append(
                    reject(f"segment {number}: its centre lies outside series {volume.series_key}")
                )
                continue
            size_mm3 = len(voxels) * abs(float(np.linalg.det(affine[:3, :3])))
            lesions.append(
                Lesion(
                    volume,
                    wanted.get(label.lower(), label),
                    centre,
                    # Not the TrackingID: free text, which may name the patient.
                    f"segment {number} of {file.image_key or 'the SEG'}",
                    file.path,
                    number,
                    {
                        "lesion_volume_mm3": round(size_mm3, 1),
                        "lesion_diameter_mm": round((6 * size_mm3 / math.pi) ** (1 / 3), 2),
                    },
                )
            )
    return lesions, rejections
