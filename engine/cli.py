"""The ``medadapt`` command line: one command per job, thin over the Python API."""

from __future__ import annotations

import errno
import json
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from medadapt.engine.contracts.components import ComponentKind
from medadapt.engine.contracts.errors import ExitCode, MedadaptError, PluginError, Terminated
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.output.text import plain_row, strict_json
from medadapt.engine.profile import ProfileError, load_profile, summarize


def _exit_code_help() -> str:
    lines = ["\b", "Exit codes:"]
    for code in ExitCode:
        lines.append(f"  {code.value:>3}  {code.name.lower().replace('_', ' ')}")
    return "\n".join(lines)


class MedadaptGroup(click.Group):
    """A click group that turns medadapt's errors into a message and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except MedadaptError as exc:
            _stderr().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            ctx.exit(exc.exit_code)
        except Terminated:
            _stderr().print("terminated (SIGTERM); finished work is kept")
            ctx.exit(ExitCode.TERMINATED)
        except KeyboardInterrupt:
            _stderr().print("interrupted; finished work is kept")
            ctx.exit(ExitCode.INTERRUPTED)
        except Exception as exc:
            what = refusal_text(exc)
            if what is not None:
                _stderr().print(f"[bold red]error:[/] {escape(what)}", highlight=False)
                ctx.exit(ExitCode.INVALID_INPUT)
            _stderr().print(traceback.format_exc(), markup=False, highlight=False)
            _stderr().print(
                "[bold red]internal error:[/] this is a bug in medadapt or one of its plugins; "
                "please report it with the traceback above"
            )
            ctx.exit(ExitCode.INTERNAL_ERROR)


def refusal_text(exc: BaseException) -> str | None:
    """The message for an error that the input or the machine caused, not medadapt: any
    OSError (a full disk, a link, a permission, a host that does not answer) and a value
    that a settings model refused; None for a bug, whose traceback is shown.

    Example:
        >>> print(refusal_text(OSError(errno.ELOOP, "Too many levels of symbolic links", "m")))
        m: Too many levels of symbolic links (a symbolic link leads back to itself: mend \
the link); what was finished before is kept, so the command can be run again
    """
    from pydantic import ValidationError

    if isinstance(exc, OSError):
        return environment_error(exc)
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or exc.title}: {error['msg']} "
            f"(given {str(error.get('input'))[:60]!r})"
            for error in exc.errors()
        )
        return f"invalid {exc.title}: {problems}"
    return None


#: What to do when the machine, not medadapt, refuses a read or a write.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "the disk is full: free space, or choose an --out on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or choose an --out elsewhere",
    errno.EROFS: "the filesystem is read-only: choose another --out",
    errno.EACCES: "no permission: give medadapt's user access, or choose another --out",
    errno.EPERM: "not permitted: give medadapt's user access, or choose another --out",
    errno.ENAMETOOLONG: "the path is too long for the filesystem: choose a shorter --out",
    errno.EIO: "the disk reported an input/output error: check the disk",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and run again",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f) or the "
    "filesystem allows: raise the limit, or choose an --out elsewhere",
    errno.ELOOP: "a symbolic link leads back to itself: mend the link",
    errno.ENOENT: "it does not exist (any more): check the path, and that nothing else "
    "moved or deleted it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder, where a file was expected: check the path",
    errno.EEXIST: "it exists already: choose another path, or remove it",
    errno.ETIMEDOUT: "no answer in time: check the address and the network",
    errno.ECONNREFUSED: "nothing listens there: check the address, and that the service runs",
    errno.EHOSTUNREACH: "the host cannot be reached: check the address and the network",
    errno.ENETUNREACH: "the network cannot be reached: check the network",
}


def environment_error(exc: OSError) -> str:
    """The message for an error of the machine (a full disk, a read-only or forbidden
    folder, a path too long, a host that does not answer), naming the file and what to do.

    Example:
        >>> import errno
        >>> print(environment_error(OSError(errno.ENOSPC, "No space left", "runs/a/x.json")))
        runs/a/x.json: No space left (the disk is full: free space, or choose an --out on \
another disk); what was finished before is kept, so the command can be run again
    """
    advice = _ENVIRONMENT_ERRORS.get(
        exc.errno or 0,
        "the machine refused the operation: check that the path exists and is readable, "
        "that the disk is healthy, and that any host named can be reached",
    )
    where = f"{exc.filename}: " if exc.filename else ""
    return (
        f"{where}{exc.strerror or exc} ({advice}); what was finished before is kept, so the "
        "command can be run again"
    )


def _stdout() -> Console:
    return Console(soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("medadapt")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=_stderr(), show_time=False, show_path=False)
        logger.addHandler(handler)


def _emit_json(data: object) -> None:
    click.echo(strict_json(data))


@click.group(
    cls=MedadaptGroup,
    epilog=_exit_code_help(),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="medadapt", prog_name="medadapt")
@click.option("--quiet", "-q", is_flag=True, help="Print only results, warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Carry a CT classifier from the hospital it was trained at to the one that must use it.

    Each hospital is described once, in a profile (see hospital_profiles/template.yaml);
    each command below does one job.
    """
    ctx.obj = {"quiet": quiet}
    _configure_logging(quiet)
    _stop_on_sigterm()


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: locks released, temporary files removed, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


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
        _emit_json(
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
        _stdout().print(table)
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
        _stdout().print(table)
        for failure in host.failures:
            _stderr().print(
                "[bold red]not loaded:[/] "
                + escape(f"{failure.name} ({failure.target}): {failure.error}")
            )
    if problem is not None:
        if not as_json:
            _stderr().print(f"[bold red]error:[/] {escape(str(problem))}")
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
        _emit_json(results)
    if not all(result["valid"] for result in results):
        ctx.exit(ExitCode.INVALID_INPUT)


def overwrite_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--overwrite`` flag every job that writes a folder takes."""
    return click.option(
        "--overwrite",
        is_flag=True,
        help=f"Write into --out even when it was made by something else (another job, other "
        f"inputs) or holds this job's own input, starting afresh: {what}. Without it such a "
        "folder is refused.",
    )


def profile_option(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``-p/--profile FILE`` option every job takes; ``purpose`` says what it must hold."""
    return click.option(
        "-p",
        "--profile",
        "profile_path",
        required=True,
        type=click.Path(path_type=Path),
        help=f"The hospital profile: {purpose}.",
    )


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
        _emit_json(summary)
        return
    origin = f"{result.layout} key names"
    if result.bundle is not None:
        name, version = result.bundle["name"], result.bundle["version"]
        origin = f"the MONAI bundle {name} {version}".rstrip() + f", {origin}"
    click.echo(f"model written to {result.model_dir} (from {origin})")
    for note in result.notes:
        _stderr().print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@model_group.command("export")
@click.argument("model_dir", metavar="MODEL", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["torchscript", "onnx", "monai-bundle"]),
    help="TorchScript (PyTorch alone), ONNX (any runtime), or a MONAI bundle folder.",
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
@overwrite_option("the file or bundle there is replaced")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def model_export_command(
    model_dir: Path, fmt: str, out: Path, report: Path | None, overwrite: bool, as_json: bool
) -> None:
    """Write a model for deployment, checked against medadapt's own probabilities.

    The export takes patches prepared as the model card says (centred on the lesion,
    resampled, windowed to [0, 1]) and gives one probability per class. Before it is kept,
    it is run on 32 probe patches and must agree with medadapt within 1e-5 (exit 1 and
    nothing written otherwise). TorchScript and ONNX files carry the model card. ONNX needs
    pip install 'medadapt[onnx]', and is checked when onnxruntime is installed.
    """
    from medadapt.engine.export import export_model

    registry = get_plugin_host().registry()
    result = export_model(model_dir, registry, fmt, out, report=report, overwrite=overwrite)
    agreement = result.agreement
    summary = {
        "path": str(result.path),
        "format": result.format,
        "checked": None
        if agreement is None
        else {"patches": agreement.patches, "max_difference": agreement.max_difference},
        "notes": result.notes,
    }
    if as_json:
        _emit_json(summary)
        return
    checked = (
        "not run here"
        if agreement is None
        else f"agrees with medadapt on {agreement.patches} probe patches: largest difference "
        f"{agreement.max_difference:.1e}, allowed 1e-05"
    )
    click.echo(f"{result.format} written to {result.path} ({checked})")
    for note in result.notes:
        _stderr().print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@cli.command("train")
@profile_option("data, backbone, training")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<site>-train).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@overwrite_option("a finished model or an interrupted run there is trained again")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def train_command(
    ctx: click.Context,
    profile_path: Path,
    out: Path | None,
    resume: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Train a source model on the profile's labelled data.

    Splits patients into train, validation and test; validates every epoch; keeps the best
    epoch; writes OUT/model (weights.safetensors and card.json), OUT/run.json and a
    checkpoint after every epoch, so --resume continues after an interruption.
    Under torchrun, trains on every process with DistributedDataParallel.
    """
    from medadapt.engine.training.job import train

    host = get_plugin_host()
    registry = host.registry()
    profile = load_profile(profile_path, registry)
    out = out or Path("runs") / f"{_slug(profile.site.name)}-train"
    quiet = as_json or bool(ctx.find_root().obj["quiet"])
    result = train(profile, registry, host, out, resume=resume, overwrite=overwrite, quiet=quiet)
    summary = {
        "model": str(result.model_dir),
        "best_epoch": result.best_epoch,
        "validation": {k: v for k, v in result.best.items() if k.startswith("val_")},
        "stopped_early": result.stopped_early,
        "diagnostics": result.diagnostics,
        "samples": result.counts,
    }
    if as_json:
        _emit_json(summary)
        return
    auroc = summary["validation"].get("val_auroc")
    click.echo(
        f"model written to {result.model_dir}\n"
        f"  best epoch {result.best_epoch}: validation AUROC "
        f"{'n/a' if auroc is None else f'{auroc:.3f}'}, "
        f"loss {summary['validation'].get('val_loss') or float('nan'):.3f}"
    )
    if result.stopped_early:
        click.echo(f"  stopped early: {result.stopped_early}")
    for note in result.diagnostics:
        _stderr().print(f"[yellow]note:[/] {escape(note)}", highlight=False)


@cli.command("adapt")
@profile_option("the target site: data, adaptation, selection, training")
@click.option(
    "--from",
    "source_model",
    type=click.Path(path_type=Path),
    help="The source model folder (default: the profile's adaptation.source_model).",
)
@click.option(
    "--source-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The source site's profile, for methods that need labelled source data.",
)
@click.option("--method", help="An adaptation method, or auto (default: the profile's).")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run every method this many times, with seeds seed, seed+1, ...; each run is a "
    "candidate of its own (the target's split stays the same).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<site>-adapt).",
)
@overwrite_option("none of its finished runs is reused")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def adapt_command(
    ctx: click.Context,
    profile_path: Path,
    source_model: Path | None,
    source_profile: Path | None,
    method: str | None,
    seeds: int,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Carry a source model to the target site of the profile.

    With adaptation.target_labels: validation, the validation patients' labels choose each
    run's best epoch, the method and whether to adapt at all (no method trains on them);
    without labels, a label-free score chooses, and what is kept is a proposal. The target
    test split is set aside unread. --method auto tries every method the data allow beside
    the unadapted model, and keeps the unadapted model unless the evidence says otherwise.
    Prints what was kept and on what evidence; writes OUT/model and OUT/adapt.json. Running
    the same command again reuses finished runs and resumes an interrupted one.
    """
    from medadapt.engine.adaptation import adapt

    host = get_plugin_host()
    registry = host.registry()
    profile = load_profile(profile_path, registry)
    model = source_model or (profile.adaptation.source_model if profile.adaptation else None)
    if model is None:
        raise click.UsageError(
            "no source model: give --from MODEL_FOLDER or set adaptation.source_model"
        )
    source = load_profile(source_profile, registry) if source_profile else None
    out = out or Path("runs") / f"{_slug(profile.site.name)}-adapt"
    quiet = as_json or bool(ctx.find_root().obj["quiet"])
    result = adapt(
        profile,
        registry,
        host,
        model,
        out,
        method=method,
        source_profile=source,
        seeds=seeds,
        overwrite=overwrite,
        quiet=quiet,
    )
    if as_json:
        _emit_json(result.summary)
        return
    summary = result.summary
    better = "higher" if summary["selection_higher_is_better"] else "lower"
    click.echo(
        f"model written to {result.model_dir}\n"
        f"  each run's epoch chosen by: {summary['selection']} ({better} is better)\n"
        f"  decided by: {summary['decision']['rule']}"
    )
    for name, figures in summary["methods"].items():
        compared = [
            f"{key.replace('_', ' ')} {value:.3f}"
            for run in figures["runs"][:1]
            for key, value in (run["compared"] or {}).items()
            if isinstance(value, float)
        ]
        click.echo(
            f"  {name:<12} epoch score {figures['score_mean']:.3f} ± {figures['score_sd']:.3f} "
            f"over {len(figures['runs'])} seed(s)" + "".join(f", {c}" for c in compared)
        )
    click.echo(result.decision.statement)


@cli.command("shift")
@profile_option("the target site: data, preprocessing")
@click.option(
    "--against",
    "source_profile",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The source site's profile.",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="A model (usually the source model) whose features are compared too.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where shift.json goes (default: runs/<site>-shift).",
)
@overwrite_option("shift.json is written anew")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def shift_command(
    ctx: click.Context,
    profile_path: Path,
    source_profile: Path,
    model_dir: Path | None,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """How the target site's data differs from the source site's.

    Compares acquisition attributes, HU histograms around the lesions and, with --model,
    the model's features (MMD with a permutation p-value, and a domain classifier's AUROC).
    Reads the train and validation splits only. Writes OUT/shift.json (pass it to
    `medadapt validate --shift`) and prints a verdict: none, moderate or large shift.
    """
    from medadapt.engine.shift import analyse_shift, describe_thresholds

    registry = get_plugin_host().registry()
    target = load_profile(profile_path, registry)
    source = load_profile(source_profile, registry)
    out = out or Path("runs") / f"{_slug(target.site.name)}-shift"
    result = analyse_shift(target, source, registry, model_dir, out, overwrite=overwrite)
    if as_json:
        _emit_json(result)
        return
    sites = result["sites"]
    table = Table(title=escape(f"{sites['source']} -> {sites['target']}"))
    table.add_column("attribute")
    table.add_column(escape(sites["source"]))
    table.add_column(escape(sites["target"]))
    for row in result["acquisition"]:
        plain_row(table, row["attribute"].replace("_", " "), row["source"], row["target"])
    _stdout().print(table)
    click.echo(f"HU distance (Wasserstein) around the lesions: {result['hu_wasserstein']:.1f} HU")
    for tissue in result["tissue_medians_hu"]:
        if tissue["difference"] is not None:
            click.echo(
                f"  median HU in {tissue['tissue']}: {tissue['source']:.0f} -> "
                f"{tissue['target']:.0f} ({tissue['difference']:+.0f})"
            )
    if "features" in result:
        features = result["features"]
        auroc = features["domain_classifier_auroc"]
        click.echo(
            f"model features: MMD {features['mmd']:.4f} (p = {features['mmd_p_value']:.3f}), "
            f"domain classifier AUROC {'n/a' if auroc is None else f'{auroc:.3f}'}"
        )
    click.echo(f"verdict: {result['verdict'].upper()} shift. {result['explanation']}")
    click.echo(f"  (rule: {describe_thresholds()})")
    click.echo(f"written to {out / 'shift.json'}")


@cli.command("validate")
@profile_option("the site: data, task, acceptance, report")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The model folder to judge.",
)
@click.option(
    "--baseline",
    "baseline_dir",
    type=click.Path(path_type=Path),
    help="A model to compare with (usually the unadapted source model).",
)
@click.option(
    "--shift",
    "shift_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The shift.json written by `medadapt shift`, shown in the report.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder (default: runs/<site>-validate).",
)
@overwrite_option("the report is written anew")
@click.option("--json", "as_json", is_flag=True, help="Print the report's JSON for machines.")
@click.pass_context
def validate_command(
    ctx: click.Context,
    profile_path: Path,
    model_dir: Path,
    baseline_dir: Path | None,
    shift_file: Path | None,
    out: Path | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Measure a model on the site's test patients and write the clinician report.

    Chooses the operating point on the validation split, then measures on the test split:
    AUROC, sensitivity, specificity, PPV, NPV and calibration with patient-level bootstrap
    intervals, subgroups, and the paired difference against --baseline. Judges the
    profile's acceptance criteria and writes OUT/report.html and OUT/report.json.
    Exit code 0 when every criterion passes, 1 when one fails, 5 when no verdict is
    possible (too few test patients, a criterion that could not be measured).
    """
    from medadapt.engine.validation.acceptance import NO_VERDICT, PASS
    from medadapt.engine.validation.job import validate

    host = get_plugin_host()
    registry = host.registry()
    profile = load_profile(profile_path, registry)
    shift = _read_json(shift_file, "the shift analysis") if shift_file else None
    out = out or Path("runs") / f"{_slug(profile.site.name)}-validate"
    result = validate(
        profile, registry, host, model_dir, out, baseline_dir, shift, overwrite=overwrite
    )
    report = result.report
    if as_json:
        _emit_json(report)
    else:
        click.echo(_validation_text(report, out))
    if result.verdict == NO_VERDICT:
        ctx.exit(ExitCode.NO_VERDICT)
    if result.verdict != PASS:
        ctx.exit(ExitCode.NOT_PASSED)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    from medadapt.engine.contracts.errors import InvalidInputError

    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: cannot read {what} ({exc})") from None


def _validation_text(report: dict[str, Any], out: Path) -> str:
    from medadapt.engine.validation.acceptance import criterion_text
    from medadapt.engine.validation.report import interval_text

    model = report["results"]["model"]
    lines = [
        f"report written to {out / 'report.html'} and {out / 'report.json'}",
        f"  test patients {report['data']['patients'].get('test', 0)}: AUROC "
        f"{interval_text(model['auroc'])}",
        f"  operating point {model['threshold']:.3f} ({report['operating_point_rule']}): "
        f"sensitivity {interval_text(model['sensitivity'])}, "
        f"specificity {interval_text(model['specificity'])}",
    ]
    if report["comparison"]:
        lines.append(
            f"  baseline AUROC {interval_text(report['results']['baseline']['auroc'])}; "
            f"difference {interval_text(report['comparison']['auroc_difference'])}"
        )
    acceptance = report["acceptance"]
    for criterion in acceptance["criteria"]:
        lines.append(f"  {criterion['status'].upper():<12} {criterion_text(criterion)}")
    lines.append(f"  verdict: {acceptance['verdict'].upper()}")
    if acceptance.get("caveat"):
        lines.append(f"  {acceptance['caveat']}")
    lines += [f"  warning: {w['text']} {w['advice']}" for w in report.get("warnings", [])]
    lines += [f"  no verdict because {reason}" for reason in acceptance["no_verdict_because"]]
    return "\n".join(lines)


@cli.command("batch")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from",
    "source_model",
    type=click.Path(path_type=Path),
    help="With profiles instead of a jobs file: the source model carried to each site.",
)
@click.option("--method", help="With profiles: an adaptation method, or auto.")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run every method this many times, with seeds seed, seed+1, ...; each run is a "
    "candidate of its own (the target's split stays the same).",
)
@click.option(
    "--source-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With profiles: the source site's profile, for methods that need its data.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker processes of the local Dask cluster.",
)
@click.option("--scheduler", help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="How many more times a job that failed unexpectedly is tried.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs") / "batch",
    show_default=True,
    help="Batch folder: jobs/<id>/ and batch.json (every worker must see it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print batch.json for machines.")
@click.pass_context
def batch_command(
    ctx: click.Context,
    files: tuple[Path, ...],
    source_model: Path | None,
    method: str | None,
    seeds: int,
    source_profile: Path | None,
    workers: int,
    scheduler: str | None,
    retries: int,
    out: Path,
    as_json: bool,
) -> None:
    """Run many adaptation jobs on Dask: JOBS.yaml, or profiles with --from.

    Each job adapts a model to a site (training the source model first when the job says
    `train:`) and validates it. Finished jobs are skipped when the batch runs again, failed
    or missing ones run; a job that fails with bad input does not stop the others. Ends with
    a table and OUT/batch.json. Exit code 0 when every job finished (whatever its acceptance
    verdict), 6 when some failed.
    """
    from medadapt.engine.batch import jobs_for_profiles, read_jobs_file, run_batch

    if len(files) == 1 and source_model is None:
        jobs = read_jobs_file(files[0])
    elif source_model is None:
        raise click.UsageError("several profiles need --from MODEL_FOLDER (or give one jobs file)")
    else:
        jobs = jobs_for_profiles(list(files), source_model, method, seeds, source_profile)
    quiet = as_json or bool(ctx.find_root().obj["quiet"])
    names = {job.id: job.name for job in jobs}
    if quiet:
        outcomes = run_batch(jobs, out, workers, scheduler, retries)
    else:
        from rich.live import Live

        def table(phases: Mapping[str, str]) -> Table:
            view = Table(title=f"{len(names)} job(s) on {scheduler or f'{workers} local workers'}")
            view.add_column("job")
            view.add_column("state")
            for job_id, phase in phases.items():
                plain_row(view, names[job_id], phase)
            return view

        with Live(
            table({job_id: "waiting" for job_id in names}), console=_stderr(), transient=True
        ) as live:
            outcomes = run_batch(
                jobs,
                out,
                workers,
                scheduler,
                retries,
                on_update=lambda phases: live.update(table(phases)),
            )
    summary = json.loads((out / "batch.json").read_text())
    if as_json:
        _emit_json(summary)
    else:
        view = Table(title=escape(f"batch written to {out / 'batch.json'}"))
        for column in ("job", "status", "AUROC", "before", "verdict", "folder or reason"):
            view.add_column(column)
        for outcome in outcomes:
            result = outcome.result
            plain_row(
                view,
                outcome.job.name,
                outcome.status,
                _short(result.get("auroc")),
                _short(result.get("baseline_auroc")),
                str(result.get("verdict", "")),
                outcome.reason or str(outcome.folder),
            )
        _stdout().print(view)
    if any(outcome.status == "failed" for outcome in outcomes):
        ctx.exit(ExitCode.SOME_JOBS_FAILED)


def _short(estimate: dict[str, Any] | None) -> str:
    return "" if not estimate or estimate.get("value") is None else f"{estimate['value']:.3f}"


@cli.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Where everything goes: sites, profiles, cache, models, reports.",
)
@click.option(
    "--fast",
    is_flag=True,
    help="Fewer patients and epochs: a smoke check in about a minute (its figures mean little).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary's JSON for machines.")
@click.pass_context
def demo_command(ctx: click.Context, out: Path, fast: bool, as_json: bool) -> None:
    """See medadapt do its whole job on simulated hospitals, with no data of your own.

    Writes Hospital A's and Hospital B's chest CT (different scanners) and B's head CT as
    DICOM with label files, trains at A, measures the shift to B and to B's head CT, adapts
    to B (auto; B's validation labels decide what is kept, no method trains on them),
    validates on B's test patients against the unadapted model, and prints a summary read
    from the reports. Writes nothing outside OUT; running
    it again reuses what is finished.
    """
    from medadapt.engine.demo import run_demo, summary_text

    quiet = ctx.obj["quiet"] or as_json
    started = time.perf_counter()

    def step(text: str) -> None:
        if not quiet:
            _stderr().print(f"[{time.perf_counter() - started:5.0f} s] {text}")

    result = run_demo(out, fast=fast, step=step)
    # Only now: validate imports matplotlib, which the demo first points inside OUT.
    from medadapt.engine.validation.acceptance import NO_VERDICT, PASS

    if as_json:
        _emit_json(result.summary)
        return
    step(f"done; everything is in {out}")
    click.echo(summary_text(result.summary))
    verdict = result.summary["verdict"]
    if verdict == NO_VERDICT:
        ctx.exit(ExitCode.NO_VERDICT)
    if verdict != PASS:
        ctx.exit(ExitCode.NOT_PASSED)


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


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "site"


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


def main() -> None:
    """The ``medadapt`` console script: load plugins, let them add commands, run."""
    _configure_logging(quiet=False)
    get_plugin_host().add_commands(cli)
    cli.main(prog_name="medadapt")
