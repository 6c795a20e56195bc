"""The ``phantom`` plugin: simulated hospitals with real scanner physics.

``medadapt phantom`` writes a hospital as DICOM series and a label file; the ``phantom``
data source serves the same patients from memory for quick runs. Patients are synthetic:
no real person's data is used anywhere, and their identities say so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import click
from pydantic import ValidationError

from medadapt.engine import (
    DataSource,
    ExitCode,
    Image,
    InvalidInputError,
    SampleRecord,
    ScanResult,
    hookimpl,
    progress_bar,
    strict_json,
)
from medadapt.plugins.phantom.hospital import (
    GENERATOR_VERSION,
    HospitalSpec,
    draw,
    patient_id,
    scan_patient,
    series_label,
    write_hospital,
)
from medadapt.plugins.phantom.scanner import KERNELS, PRESETS


class Phantom(DataSource):
    """Simulated patients of one hospital, generated in memory; labels come with them."""

    name = "phantom"
    Params = HospitalSpec
    label_levels = frozenset({"lesion", "series"})

    def scan(self, label_file: Path | None = None, level: str = "lesion") -> ScanResult:
        """One sample per simulated lesion (per patient for the water phantom); at
        ``level="series"``, one per patient, labelled by its lesions (:func:`series_label`)."""
        if label_file is not None:
            raise InvalidInputError(
                f"the phantom source makes its own labels; remove data.label_file ({label_file})"
            )
        spec: HospitalSpec = self.params  # type: ignore[assignment]
        scanner = spec.scanner_preset()
        attributes = {
            "manufacturer": scanner.manufacturer,
            "manufacturer_model": scanner.model,
            "convolution_kernel": scanner.kernel,
            "kvp": float(scanner.kvp),
            "slice_thickness": float(scanner.slice_thickness_mm),
            "pixel_spacing": round(float(spec.pixel_mm), 4),
            "body_part": spec.body_region.upper(),
        }
        records = []
        z0, origin, pixel = spec.slice_positions()[0], spec.grid_origin(), spec.pixel_mm
        for index in range(spec.patients):
            patient = draw(spec, index)
            locator = json.dumps({"spec": spec.model_dump(mode="json"), "patient": index})
            key = f"patient-{hashlib.sha256(patient_id(spec, index).encode()).hexdigest()[:16]}"
            if level == "series":
                label = series_label(patient)
                records.append(
                    SampleRecord(key, f"series-{key[8:]}", locator, dict(attributes), label)
                )
                continue
            for number, lesion in enumerate(patient.lesions, start=1):
                x, y, z = lesion.centre
                records.append(
                    SampleRecord(
                        patient_key=key,
                        series_key=f"series-{key[8:]}",
                        locator=locator,
                        attributes={**attributes, "lesion_id": f"L{number}"},
                        label=lesion.label,
                        centre=(
                            (z - z0) / spec.thickness_mm,
                            (y - origin) / pixel,
                            (x - origin) / pixel,
                        ),
                    )
                )
            if not patient.lesions:
                records.append(SampleRecord(key, f"series-{key[8:]}", locator, dict(attributes)))
        return ScanResult(records=records)

    def load(self, record: SampleRecord) -> Image:
        """The patient's scan in HU, axes (z, y, x) towards head, back and left."""
        located = json.loads(record.locator)
        spec = HospitalSpec.model_validate(located["spec"])
        scanned = scan_patient(spec, int(located["patient"]))
        return Image(hu=scanned.hu, spacing_mm=(spec.thickness_mm, spec.pixel_mm, spec.pixel_mm))

    def fingerprint(self, record: SampleRecord) -> str:
        """The generator version and the spec: the same spec always gives the same pixels."""
        return hashlib.sha256(f"{GENERATOR_VERSION}|{record.locator}".encode()).hexdigest()


@click.command("phantom")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--scanner",
    type=click.Choice(list(PRESETS)),
    default="siemens-smooth-standard-dose",
    show_default=True,
    help="Scanner preset: vendor, model, kernel, dose, geometry.",
)
@click.option("--kernel", type=click.Choice(list(KERNELS)), help="Reconstruction kernel.")
@click.option("--dose", type=float, help="CTDIvol in mGy.")
@click.option("--hu-offset", type=float, help="What water reads instead of 0 HU.")
@click.option("--pixel-spacing", type=float, help="Pixel size in mm.")
@click.option("--slice-thickness", type=float, help="Slice thickness in mm.")
@click.option(
    "--body-region",
    type=click.Choice(["chest", "head", "abdomen", "water"]),
    default="chest",
    show_default=True,
    help="water: a uniform phantom for QA.",
)
@click.option(
    "--patients",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="How many simulated patients (each with one or more lesions).",
)
@click.option(
    "--slices",
    type=click.IntRange(1),
    default=24,
    show_default=True,
    help="Slices per CT series.",
)
@click.option(
    "--size",
    type=click.IntRange(32, 1024),
    default=256,
    show_default=True,
    help="Image rows and columns.",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Drives the patients, their lesions and the noise: the same seed, the same site.",
)
@click.option(
    "--malignant-fraction",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="The share of lesions that are malignant.",
)
@click.option(
    "--difficulty",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Higher makes benign and malignant lesions look more alike.",
)
@click.option(
    "--contrast-enhancement",
    type=click.FloatRange(0, 300),
    default=0.0,
    show_default=True,
    help="HU every lesion gains from an iodinated contrast agent (brain metastases: 30-60).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Processes writing patients in parallel.",
)
@click.option(
    "--seg",
    "segmentations",
    is_flag=True,
    help="Also write each patient's lesions as a DICOM SEG (one segment per lesion).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def phantom_command(
    ctx: click.Context,
    out: Path,
    as_json: bool,
    workers: int,
    segmentations: bool,
    **options: object,
) -> None:
    """Write a simulated hospital: one CT series per patient in OUT/dicom, and OUT/labels.csv.

    Patients (anatomy and lesions) depend only on --seed and --body-region; the scanner
    options change how they are imaged, so two hospitals with the same seed hold the same
    patients scanned differently. The same options always write the same files; an
    interrupted run picks up where it stopped.
    """
    spec = _spec(
        scanner=options["scanner"],
        kernel=options["kernel"],
        dose_mgy=options["dose"],
        hu_offset=options["hu_offset"],
        pixel_spacing_mm=options["pixel_spacing"],
        slice_thickness_mm=options["slice_thickness"],
        body_region=options["body_region"],
        patients=options["patients"],
        slices=options["slices"],
        size=options["size"],
        seed=options["seed"],
        malignant_fraction=options["malignant_fraction"],
        difficulty=options["difficulty"],
        contrast_enhancement_hu=options["contrast_enhancement"],
    )
    quiet = as_json or bool((ctx.find_root().obj or {}).get("quiet"))
    with progress_bar(quiet) as progress:
        task = progress.add_task("simulating patients", total=spec.patients)
        summary = write_hospital(
            spec,
            out,
            workers=workers,
            on_patient=lambda n: progress.advance(task, n),
            segmentations=segmentations,
        )
    data = summary.as_dict()
    if as_json:
        click.echo(strict_json(data))
        return
    scanner = data["scanner"]
    lesions = data["lesions"]
    click.echo(
        f"wrote {data['patients']} simulated {spec.body_region} patients to {data['dicom']}\n"
        f"  {spec.slices} slices of {spec.size} x {spec.size}, {data['pixel_spacing_mm']:g} mm "
        f"pixels, {data['slice_thickness_mm']:g} mm slices\n"
        f"  scanner: {scanner['manufacturer']} {scanner['model']}, kernel {scanner['kernel']}, "
        f"CTDIvol {scanner['ctdi_vol_mgy']:g} mGy, {scanner['kvp']:g} kVp, "
        f"HU offset {scanner['hu_offset']:+g}\n"
        f"  lesions: {sum(lesions.values())} ({lesions['benign']} benign, "
        f"{lesions['malignant']} malignant) in {data['labels']}"
    )
    if spec.body_region != "water" and sum(lesions.values()) == 0:
        ctx.exit(ExitCode.NOT_PASSED)


#: The option that sets each of HospitalSpec's fields, where its name differs.
_OPTION_OF = {
    "dose_mgy": "--dose",
    "pixel_spacing_mm": "--pixel-spacing",
    "slice_thickness_mm": "--slice-thickness",
    "contrast_enhancement_hu": "--contrast-enhancement",
}


def _spec(**fields: object) -> HospitalSpec:
    """The hospital the options describe; a value out of range is refused by its option."""
    try:
        return HospitalSpec(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            option = _OPTION_OF.get(field, "--" + field.replace("_", "-"))
            problems.append(f"{option} {error.get('input')!r}: {error['msg']}")
        raise click.UsageError("; ".join(problems)) from None


@hookimpl
def medadapt_data_sources() -> Sequence[type[DataSource]]:
    return [Phantom]


@hookimpl
def medadapt_commands(cli: click.Group) -> None:
    from medadapt.plugins.phantom.demo import demo_command

    cli.add_command(phantom_command)
    cli.add_command(demo_command)
