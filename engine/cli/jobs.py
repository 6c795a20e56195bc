"""One command per job: ``train``, ``adapt``, ``shift``, ``validate`` and ``batch``, each thin over
its Python function."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from medadapt.engine.cli.base import (
    adaptation_options,
    cli,
    device_option,
    emit_json,
    note,
    overwrite_option,
    profile_option,
    stderr,
    stdout,
)
from medadapt.engine.contracts.errors import ExitCode
from medadapt.engine.contracts.host import get_plugin_host
from medadapt.engine.output.text import plain_row, slug
from medadapt.engine.profile import load_profile


@cli.command("train")
@profile_option("data, backbone, training")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<site>-train).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@overwrite_option("a finished model or an interrupted run there is trained again")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def train_command(
    ctx: click.Context,
    profile_path: Path,
    out: Path | None,
    resume: bool,
    overwrite: bool,
    device: str | None,
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
    profile = load_profile(profile_path, registry).on_device(device)
    out = out or Path("runs") / f"{slug(profile.site.name, 'site')}-train"
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
        emit_json(summary)
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
    for text in result.diagnostics:
        note(text)


@cli.command("adapt")
@profile_option("the target site: data, adaptation, selection, training")
@adaptation_options(batch=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder (default: runs/<site>-adapt).",
)
@overwrite_option("none of its finished runs is reused")
@device_option
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
    device: str | None,
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
    profile = load_profile(profile_path, registry).on_device(device)
    model = source_model or (profile.adaptation.source_model if profile.adaptation else None)
    if model is None:
        raise click.UsageError(
            "no source model: give --from MODEL_FOLDER or set adaptation.source_model"
        )
    source = load_profile(source_profile, registry) if source_profile else None
    out = out or Path("runs") / f"{slug(profile.site.name, 'site')}-adapt"
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
        emit_json(result.summary)
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
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_context
def shift_command(
    ctx: click.Context,
    profile_path: Path,
    source_profile: Path,
    model_dir: Path | None,
    out: Path | None,
    overwrite: bool,
    device: str | None,
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
    target = load_profile(profile_path, registry).on_device(device)
    source = load_profile(source_profile, registry)
    out = out or Path("runs") / f"{slug(target.site.name, 'site')}-shift"
    result = analyse_shift(target, source, registry, model_dir, out, overwrite=overwrite)
    if as_json:
        emit_json(result)
        return
    sites = result["sites"]
    table = Table(title=escape(f"{sites['source']} -> {sites['target']}"))
    table.add_column("attribute")
    table.add_column(escape(sites["source"]))
    table.add_column(escape(sites["target"]))
    for row in result["acquisition"]:
        plain_row(table, row["attribute"].replace("_", " "), row["source"], row["target"])
    stdout().print(table)
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
@device_option
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
    device: str | None,
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
    profile = load_profile(profile_path, registry).on_device(device)
    shift = _read_json(shift_file, "the shift analysis") if shift_file else None
    out = out or Path("runs") / f"{slug(profile.site.name, 'site')}-validate"
    result = validate(
        profile, registry, host, model_dir, out, baseline_dir, shift, overwrite=overwrite
    )
    report = result.report
    if as_json:
        emit_json(report)
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
@adaptation_options(batch=True)
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
@device_option
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
    device: str | None,
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
        outcomes = run_batch(jobs, out, workers, scheduler, retries, device=device)
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
            table({job_id: "waiting" for job_id in names}), console=stderr(), transient=True
        ) as live:
            outcomes = run_batch(
                jobs,
                out,
                workers,
                scheduler,
                retries,
                on_update=lambda phases: live.update(table(phases)),
                device=device,
            )
    summary = json.loads((out / "batch.json").read_text())
    if as_json:
        emit_json(summary)
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
        stdout().print(view)
    if any(outcome.status == "failed" for outcome in outcomes):
        ctx.exit(ExitCode.SOME_JOBS_FAILED)


def _short(estimate: dict[str, Any] | None) -> str:
    return "" if not estimate or estimate.get("value") is None else f"{estimate['value']:.3f}"
