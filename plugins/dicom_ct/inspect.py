"""``medadapt inspect``: what a DICOM folder holds, and what cannot be used."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medadapt.engine import (
    ExitCode,
    InvalidInputError,
    PathScrubber,
    Pseudonymizer,
    Rejection,
    plain_row,
    progress_bar,
    strict_json,
)
from medadapt.plugins.dicom_ct.labels import Lesion
from medadapt.plugins.dicom_ct.pixels import UndecodableFile, UndecodableSeries, load_hu
from medadapt.plugins.dicom_ct.scan import iter_files, scan_folder
from medadapt.plugins.dicom_ct.segmentation import join_segmentations
from medadapt.plugins.dicom_ct.series import Volume


def describe_volume(
    volume: Volume, undecodable: list[UndecodableFile] | None = None
) -> dict[str, Any]:
    """One series as ``inspect`` reports it; loads the pixels for the HU range.

    Args:
        undecodable: gets each file left out because its pixels cannot be decoded (its
            slice filled in from the neighbours, as every job does).
    """
    left_out: list[UndecodableFile] = []
    image = load_hu(volume, on_undecodable=left_out.append)
    if undecodable is not None:
        undecodable.extend(left_out)
    attributes = volume.attributes
    filled = [
        f"{exc.path.name} cannot be decoded: its slice is filled in by linear interpolation "
        "between its neighbours"
        for exc in left_out
    ]
    return {
        "series": volume.series_key,
        "patient": volume.patient_key,
        "manufacturer": attributes.get("manufacturer"),
        "model": attributes.get("manufacturer_model"),
        "convolution_kernel": attributes.get("convolution_kernel"),
        "kvp": attributes.get("kvp"),
        "slice_thickness_mm": attributes.get("slice_thickness"),
        "pixel_spacing_mm": list(volume.acquisition_spacing[1:]),
        "spacing_between_slices_mm": round(volume.acquisition_spacing[0], 4),
        "slices": len(volume.slices) - len(left_out),
        "shape": list(image.hu.shape),
        "hu_min": float(image.hu.min()),
        "hu_max": float(image.hu.max()),
        "warnings": [*volume.warnings, *filled],
    }


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--no-recursive", is_flag=True, help="Do not look into subfolders.")
@click.pass_context
def inspect_command(ctx: click.Context, path: Path, as_json: bool, no_recursive: bool) -> None:
    """List the CT series in a DICOM folder, and every file that cannot be used and why.

    DICOM SEG files are matched to the series they were drawn on; each usable one is
    listed with its lesions, and one that matches no series, or a segment without a label,
    is listed with the reason.

    Patients and series are shown by pseudonym only; set MEDADAPT_PSEUDONYM_KEY for
    pseudonyms that stay the same between runs. Exits with 1 when no usable series is found.
    """
    quiet = as_json or bool((ctx.find_root().obj or {}).get("quiet"))
    pseudonymizer = Pseudonymizer.from_settings(None, allow_ephemeral=True)
    err = Console(stderr=True)
    total = sum(1 for _ in iter_files(path, not no_recursive))
    with progress_bar(quiet) as progress:
        task = progress.add_task("reading headers", total=total)
        found = scan_folder(
            path,
            pseudonymizer,
            recursive=not no_recursive,
            on_file=lambda _: progress.advance(task),
        )
        series, rejections = [], list(found.rejections)
        task = progress.add_task("reading pixels", total=len(found.volumes))
        for volume in found.volumes:
            undecodable: list[UndecodableFile] = []
            try:
                series.append(describe_volume(volume, undecodable))
            except UndecodableSeries as exc:
                bad = {failed.path for failed in exc.failed}
                rejections.extend(Rejection(f.path, f.reason) for f in exc.failed)
                rejections.extend(
                    Rejection(
                        s.path,
                        f"left out with its series: {exc.missing} of its {exc.slices} slices "
                        "cannot be decoded, too many to fill in from their neighbours",
                    )
                    for s in volume.slices
                    if s.path not in bad
                )
            except InvalidInputError as exc:
                rejections.extend(_unreadable(volume, str(exc)))
            # A file left out alone: its series is read without it.
            rejections.extend(Rejection(exc.path, exc.reason) for exc in undecodable)
            progress.advance(task)
    lesions, unusable = join_segmentations(found.segmentations, found.volumes)
    rejections.extend(unusable)
    segmentations = _segmentations(lesions, path)
    # How job logs, reports and batch files name each file: by pseudonym, for the person
    # who reads them without the data (see PathScrubber).
    in_outputs = PathScrubber(pseudonymizer)
    in_outputs.add(path)
    rejected = [
        {
            "path": _relative(r.path, path),
            "in_outputs": in_outputs(str(r.path)),
            "image": r.image_key,
            "reason": r.reason,
        }
        for r in rejections
    ]
    if as_json:
        click.echo(
            strict_json({"series": series, "segmentations": segmentations, "rejections": rejected})
        )
    else:
        _print_tables(series, rejected, found.files, pseudonymizer.ephemeral)
        _print_segmentations(segmentations, len(found.segmentations))
    if not series:
        if not as_json:
            err.print(f"[bold red]no usable CT series[/] in {escape(str(path))}")
        ctx.exit(ExitCode.NOT_PASSED)


def _segmentations(lesions: list[Lesion], root: Path) -> list[dict[str, Any]]:
    """Each usable DICOM SEG: the series it was drawn on and its lesions by label."""
    by_file: dict[Path, list[Lesion]] = {}
    for lesion in lesions:
        by_file.setdefault(lesion.source, []).append(lesion)
    return [
        {
            "path": _relative(file, root),
            "series": found[0].volume.series_key,
            "lesions": len(found),
            "labels": dict(sorted(Counter(lesion.label for lesion in found).items())),
        }
        for file, found in sorted(by_file.items())
    ]


def _print_segmentations(segmentations: list[dict[str, Any]], files: int) -> None:
    if not files:
        return
    labels: Counter[str] = Counter()
    for seg in segmentations:
        labels.update(seg["labels"])
    described = ", ".join(f"{n} {label}" for label, n in sorted(labels.items()))
    Console().print(
        f"{len(segmentations)} of {files} DICOM SEG files give lesions: "
        f"{sum(labels.values())} ({escape(described) or 'none'}); each segment's label is its "
        "class unless the profile maps it (data.params.segment_labels)",
        highlight=False,
    )


def _unreadable(volume: Volume, reason: str) -> list[Rejection]:
    return [Rejection(s.path, reason) for s in volume.slices]


def _relative(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root)) if root.is_dir() else file.name
    except ValueError:
        return str(file)


def _print_tables(
    series: list[dict[str, Any]], rejected: list[dict[str, Any]], files: int, ephemeral: bool
) -> None:
    out = Console()
    table = Table(title=f"{len(series)} CT series in {files} files")
    for column in (
        "series",
        "scanner",
        "kernel",
        "kVp",
        "thickness",
        "pixel (mm)",
        "slices",
        "shape z,y,x",
        "HU range",
    ):
        table.add_column(column, overflow="fold")
    for s in series:
        plain_row(
            table,
            s["series"],
            " ".join(str(v) for v in (s["manufacturer"], s["model"]) if v) or "-",
            str(s["convolution_kernel"] or "-"),
            f"{s['kvp']:g}" if s["kvp"] else "-",
            f"{s['slice_thickness_mm']:g}" if s["slice_thickness_mm"] else "-",
            " x ".join(f"{v:g}" for v in s["pixel_spacing_mm"]),
            str(s["slices"]),
            ",".join(str(n) for n in s["shape"]),
            f"{s['hu_min']:.0f} to {s['hu_max']:.0f}",
        )
    out.print(table)
    for s in series:
        for warning in s["warnings"]:
            out.print(f"[yellow]{escape(s['series'])}[/]: {escape(warning)}")
    if rejected:
        rejections = Table(title=f"{len(rejected)} files not used")
        rejections.add_column("file", overflow="fold")
        rejections.add_column("reason", overflow="fold")
        for r in rejected:
            plain_row(rejections, r["path"], r["reason"])
        out.print(rejections)
    if ephemeral:
        out.print(
            "[dim]pseudonyms are random for this run; set MEDADAPT_PSEUDONYM_KEY to keep them[/]"
        )
