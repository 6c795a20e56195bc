"""Commands around the jobs: ``plugins``, ``profile check``, ``model import`` and ``model
export``, ``augment-preview``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from medadapt.engine.cli.base import (
    cli,
    emit_json,
    note,
    overwrite_option,
    profile_option,
    stderr,
    stdout,
)
from medadapt.engine.contracts.components import ComponentKind
from medadapt.engine.contracts.errors import ExitCode, PluginError
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.output.text import plain_row
from medadapt.engine.profile import ProfileError, load_profile, summarize


@cli.command("plugins")
@click.option(
    "--components",
    is_flag=True,
    help="List every component instead: its kind, name, plugin and what it does (the "
    "first line of its docstring).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def plugins_command(ctx: click.Context, components: bool, as_json: bool) -> None:
    """List every plugin, its version and the components it provides."""
    host = get_plugin_host()
    infos = host.describe()
    problem = None
    try:
        host.registry()
    except PluginError as exc:
        problem = exc
    if as_json:
        emit_json(
            {
                "plugins": [asdict(info) for info in infos],
                "failed": [asdict(failure) for failure in host.failures],
                "error": str(problem) if problem else None,
            }
        )
    elif components:
        table = Table(title="medadapt components")
        for column in ("kind", "name", "plugin", "what it does"):
            table.add_column(column, overflow="fold")
        for kind in ComponentKind:
            for info in infos:
                for name in info.provides.get(kind.value, []):
                    what = info.descriptions.get(kind.value, {}).get(name, "")
                    plain_row(table, kind.label, name, info.name, what)
        stdout().print(table)
    else:
        table = Table(title="medadapt plugins")
        for column in ("plugin", "distribution", "provides"):
            table.add_column(column, overflow="fold")
        for info in infos:
            provides = "\n".join(
                f"{ComponentKind(kind).label}s: {', '.join(names)}"
                for kind, names in info.provides.items()
                if names
            )
            hooks = [h for h in info.hooks if h.removeprefix("medadapt_") not in info.provides]
            if hooks:
                provides += ("\n" if provides else "") + f"hooks: {', '.join(hooks)}"
            distribution = f"{info.distribution or '(registered in code)'} {info.version or ''}"
            table.add_row(
                f"{escape(info.name)}\n[dim]{escape(info.module)}[/]",
                escape(distribution.strip()),
                escape(provides),
            )
        stdout().print(table)
        for failure in host.failures:
            stderr().print(
                "[bold red]not loaded:[/] "
                + escape(f"{failure.name} ({failure.target}): {failure.error}")
            )
    if problem is not None:
        if not as_json:
            stderr().print(f"[bold red]error:[/] {escape(str(problem))}")
        ctx.exit(problem.exit_code)


@cli.group("profile")
def profile_group() -> None:
    """Check hospital profiles (write one from hospital_profiles/template.yaml)."""


@profile_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def profile_check_command(ctx: click.Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Check hospital profiles: keys, types, components and their parameters.

    Every problem is printed with the file, the line, the key and what was expected.
    The exit code is 2 when any profile is invalid.
    """
    registry = get_plugin_host().registry()
    results: list[dict[str, Any]] = []
    for file in files:
        try:
            profile = load_profile(file, registry)
        except ProfileError as exc:
            results.append(
                {
                    "file": str(file),
                    "valid": False,
                    "issues": [
                        {"line": issue.line, "key": issue.key, "message": issue.message}
                        for issue in exc.issues
                    ],
                }
            )
            if not as_json:
                click.echo(f"{file}: invalid, {len(exc.issues)} problem(s)")
                for issue in exc.issues:
                    click.echo(f"  {issue}")
            continue
        summary = summarize(profile)
        results.append({"file": str(file), "valid": True, "summary": summary})
        if not as_json and not ctx.find_root().obj["quiet"]:
            click.echo(f"{file}: valid")
            click.echo(_summary_text(summary))
    if as_json:
        emit_json(results)
    if not all(result["valid"] for result in results):
        ctx.exit(ExitCode.INVALID_INPUT)


@cli.group("model")
def model_group() -> None:
    """Bring in a model trained outside medadapt; take one out to deployment."""


@model_group.command("import")
@click.argument("weights", metavar="WEIGHTS|BUNDLE", type=click.Path(exists=True, path_type=Path))
@profile_option(
    "what the weights cannot say: backbone, task (classes, positive class), preprocessing"
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The model folder to write (then: adapt --from, validate --model).",
)
@overwrite_option("the model there is written anew from these weights")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def model_import_command(
    weights: Path, profile_path: Path, out: Path, overwrite: bool, as_json: bool
) -> None:
    """Make a model folder from a model trained elsewhere (plain PyTorch, a MONAI bundle).

    WEIGHTS is a state dict: .safetensors, or .pt/.pth saved with
    torch.save(model.state_dict(), ...), in the layout the backbone publishes (torchvision's
    ResNets, MONAI's DenseNet-121, classifier layer included) or medadapt's own. Or it is a
    MONAI bundle folder (configs/metadata.json, configs/inference.json, models/model.pt)
    whose network_def is one the backbones know; the bundle is read as data, its code never
    runs. The profile says the backbone, the classes in the model's output order, the
    positive class and the preprocessing the model was trained with. Keys, shapes and
    outputs that do not fit are refused by name; pickled and TorchScript files are refused
    with the reason.
    """
    from medadapt.engine.models.importing import import_model

    registry = get_plugin_host().registry()
    profile = load_profile(profile_path, registry)
    result = import_model(weights, profile, registry, out, overwrite=overwrite)
    summary = {
        "model": str(result.model_dir),
        "layout": result.layout,
        "bundle": result.bundle,
        "notes": result.notes,
    }
    if as_json:
        emit_json(summary)
        return
    origin = f"{result.layout} key names"
    if result.bundle is not None:
        name, version = result.bundle["name"], result.bundle["version"]
        origin = f"the MONAI bundle {name} {version}".rstrip() + f", {origin}"
    click.echo(f"model written to {result.model_dir} (from {origin})")
    for text in result.notes:
        note(text)


@model_group.command("export")
@click.argument("model_dir", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    metavar="FORMAT",
    help="An export format: torchscript (PyTorch alone), onnx (any runtime), monai-bundle "
    "(a MONAI bundle folder), or one a plugin adds (medadapt plugins --components).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The file to write (model.ts, model.onnx), or the bundle's folder.",
)
@click.option(
    "--report",
    type=click.Path(exists=True, path_type=Path),
    help="The report.json (or its folder) of `validate` on this model: its figures go into "
    "the bundle's metadata.",
)
@profile_option(
    "a site with data, whose validation patients' patches (never the test split's) join the "
    "probe patches the export is checked on",
    required=False,
)
@overwrite_option("the file or bundle there is replaced")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def model_export_command(
    model_dir: Path,
    fmt: str,
    out: Path,
    report: Path | None,
    profile_path: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write a model for deployment, checked against medadapt's own probabilities.

    The export takes patches prepared as the model card says (centred on the lesion,
    resampled, windowed to [0, 1]) and gives one probability per class. Before it is kept,
    it is run on 32 probe patches made so that medadapt's probabilities on them spread over
    (0.01, 0.99), and with --profile on up to 64 of the site's validation patches, and it
    must agree with medadapt within 1e-5, absolute, on every probability (exit 1 and nothing
    written otherwise, and also when fewer than 8 probes are within (0.01, 0.99), where
    agreement proves nothing). TorchScript and ONNX files carry the model card. ONNX needs
    pip install 'medadapt[onnx]', and is checked when onnxruntime is installed.
    """
    from medadapt.engine.models.export import TOLERANCE, export_model

    registry = get_plugin_host().registry()
    profile = None if profile_path is None else load_profile(profile_path, registry)
    result = export_model(
        model_dir, registry, fmt, out, report=report, overwrite=overwrite, profile=profile
    )
    agreement = result.agreement
    summary = {
        "path": str(result.path),
        "format": result.format,
        "checked": None
        if agreement is None
        else {
            "patches": agreement.patches,
            "informative": agreement.informative,
            "max_difference": agreement.max_difference,
            "tolerance": TOLERANCE,
        },
        "notes": result.notes,
    }
    if as_json:
        emit_json(summary)
        return
    checked = (
        "not run here"
        if agreement is None
        else f"agrees with medadapt on {agreement.patches} probe patches, "
        f"{agreement.informative} of them with probabilities within (0.01, 0.99): largest "
        f"difference {agreement.max_difference:.1e}, allowed {TOLERANCE:g}"
    )
    click.echo(f"{result.format} written to {result.path} ({checked})")
    for text in result.notes:
        note(text)


@cli.command("augment-preview")
@profile_option("data and augmentations")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The PNG file to write.",
)
@click.option(
    "--n",
    "count",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="How many samples (rows).",
)
@click.option(
    "--variants",
    type=click.IntRange(1, 12),
    default=4,
    show_default=True,
    help="Augmented versions per sample.",
)
def augment_preview_command(profile_path: Path, out: Path, count: int, variants: int) -> None:
    """Write an image of samples and their augmented versions, in the profile's window.

    Look at it before training: an augmentation that makes a lesion unrecognisable, or
    that a clinician would not accept, shows here.
    """
    from medadapt.engine.data.augment import one_of_each_class, preview_grid
    from medadapt.engine.data.samples import open_site_data

    registry = get_plugin_host().registry()
    profile = load_profile(profile_path, registry)
    data = open_site_data(profile, registry)
    labelled = [r for r in data.records if r.label is not None] or data.records
    chosen = one_of_each_class(labelled, count)
    preview_grid(profile, registry, data.loader, chosen, out, variants)
    click.echo(f"wrote {out}: {len(chosen)} samples, {variants} augmented versions each")


def _summary_text(summary: dict[str, Any]) -> str:
    window = summary["window"]
    components = summary["components"]
    lines = [
        f"site: {summary['site']} ({summary['body_region']})",
        f"task: {' vs '.join(summary['classes'])}; positive class {summary['positive_class']}",
        f"input: {summary['patches']} patches, window level {window['level']:g} HU "
        f"width {window['width']:g} HU",
        "components: "
        + (
            ", ".join(f"{kind.replace('_', ' ')} {name}" for kind, name in components.items())
            or "none chosen yet"
        ),
        f"augmentations: {', '.join(summary['augmentations']) or 'none'}",
        *(
            [
                f"adaptation: {summary['adaptation']['method']}, target labels "
                f"{summary['adaptation']['target_labels']}"
            ]
            if summary.get("adaptation")
            else []
        ),
        "acceptance: "
        + ", ".join(
            f"{key} {value:g}" if isinstance(value, float | int) else f"{key} {value}"
            for key, value in summary["acceptance"].items()
        ),
        f"seed: {summary['seed']}",
    ]
    return "\n".join(f"  {line}" for line in lines)
