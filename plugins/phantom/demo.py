"""The demo: medadapt's whole job on simulated hospitals, with no data of one's own.

Writes three simulated sites as DICOM exports with label files (Hospital A's chest CT,
Hospital B's chest CT on another scanner at low dose, Hospital B's head CT), then runs the
jobs a hospital runs: train at A, measure the shift from A to B (and to B's head CT),
adapt to B (``auto``: no method trains on B's labels; B's validation patients' labels
decide what is kept), and validate on B's test patients against the unadapted model.
Everything goes under one output folder: the sites, the profiles the jobs used (copies of
hospital_profiles/ pointing at the sites), the cache, the models and the reports.
The summary it returns is read from the reports' JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.console import Console

from medadapt.engine import (
    ExitCode,
    InvalidInputError,
    device_option,
    read_json_file,
    strict_json,
)

if TYPE_CHECKING:
    from medadapt.engine import AdaptResult

#: The shipped profiles the demo's sites use (hospital_profiles/ in the repository, installed
#: as ``medadapt.hospital_profiles``), and the simulated scanners behind them.
SITES: dict[str, dict[str, Any]] = {
    "hospital-a": {
        "profile": "hospital_a_chest.yaml",
        "phantom": {"scanner": "siemens-smooth-standard-dose", "body_region": "chest", "seed": 1},
    },
    "hospital-b": {
        "profile": "hospital_b_chest.yaml",
        "phantom": {
            "scanner": "ge-sharp-low-dose",
            "dose_mgy": 0.3,
            "body_region": "chest",
            "seed": 2,
        },
    },
    "hospital-b-head": {
        "profile": "hospital_b_head.yaml",
        "phantom": {"scanner": "ge-sharp-low-dose", "body_region": "head", "seed": 3},
    },
}


#: The pseudonym key of the demo's simulated patients (not a secret: nobody is real).
DEMO_KEY = "medadapt-demo-simulated-patients-only"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: patients per site, epochs and the methods ``auto`` tries."""

    patients: dict[str, int]
    epochs: int
    candidates: list[str]


FULL = DemoSize(
    patients={"hospital-a": 120, "hospital-b": 120, "hospital-b-head": 40},
    epochs=12,
    candidates=["adabn", "tent", "coral", "mmd"],
)
FAST = DemoSize(
    patients={"hospital-a": 40, "hospital-b": 40, "hospital-b-head": 12},
    epochs=3,
    candidates=["adabn", "coral"],
)


@dataclass
class DemoResult:
    """Where the demo wrote its work, and the summary read from its reports."""

    out: Path
    summary: dict[str, Any]


def shipped_profiles() -> Path:
    """The folder of the profiles shipped with medadapt (hospital_profiles/)."""
    return Path(str(resources.files("medadapt.hospital_profiles")))


def run_demo(
    out: Path,
    *,
    fast: bool = False,
    step: Callable[[str], None] = lambda _: None,
    device: str | None = None,
) -> DemoResult:
    """Run the whole demo into ``out``; ``step`` is told what is being done; ``device``
    (``--device``) is where every job computes, whatever the shipped profiles say.

    Running it again in the same folder reuses the simulated sites and finished runs.

    Raises:
        InvalidInputError: ``out`` holds something that is not a demo of the same size.
    """
    out = out.resolve()
    if _claim(out, fast):
        step("the folder held a demo of an older medadapt: starting it afresh")
    # Before anything imports matplotlib, which picks its cache folder when imported.
    _keep_inside(out)
    from medadapt.engine import (
        CHECKPOINT,
        adapt,
        analyse_shift,
        get_plugin_host,
        load_profile,
        train,
        validate,
    )
    from medadapt.plugins.phantom.hospital import HospitalSpec, write_hospital

    size = FAST if fast else FULL
    cache = out / "cache"
    host = get_plugin_host()
    registry = host.registry()
    profiles = {}
    for site, settings in SITES.items():
        step(f"simulating {site}: {size.patients[site]} patients, written as DICOM")
        folder = out / "sites" / site
        spec = HospitalSpec(**settings["phantom"], patients=size.patients[site], slices=16)
        write_hospital(spec, folder, workers=os.cpu_count() or 1)
        path = _profile(out, site, settings["profile"], folder, size)
        profiles[site] = load_profile(path, registry).on_device(device)
    runs = out / "runs"
    a, b, head = profiles["hospital-a"], profiles["hospital-b"], profiles["hospital-b-head"]

    trained = runs / "hospital-a-train"
    model = trained / "model"  # written only once training has finished
    if model.is_dir():
        step("reusing the source model trained at Hospital A")
    else:
        step("training the source model at Hospital A")
        resume = (trained / CHECKPOINT).is_file()
        train(a, registry, host, trained, resume=resume, quiet=True, cache_dir=cache)
    step("measuring the shift from Hospital A to Hospital B, and to B's head CT")
    shift_b = analyse_shift(b, a, registry, model, runs / "hospital-b-shift", cache_dir=cache)
    shift_head = analyse_shift(
        head, a, registry, model, runs / "hospital-b-head-shift", cache_dir=cache
    )
    step(
        f"adapting to Hospital B (auto: {', '.join(size.candidates)}; B's validation labels "
        "decide what is kept)"
    )
    adapted = adapt(
        b,
        registry,
        host,
        model,
        runs / "hospital-b-adapt",
        method="auto",
        source_profile=a,
        quiet=True,
        cache_dir=cache,
    )
    step("validating at Hospital A, and at Hospital B against the unadapted model")
    home = validate(
        a,
        registry,
        host,
        model,
        runs / "hospital-a-validate",
        cache_dir=cache,
        quiet=True,
    )
    target = validate(
        b,
        registry,
        host,
        adapted.model_dir,
        runs / "hospital-b-validate",
        baseline_dir=model,
        shift=shift_b,
        cache_dir=cache,
        quiet=True,
    )
    summary = summarise(home.report, target.report, shift_b, shift_head, adapted)
    summary["report"] = _shown(runs / "hospital-b-validate" / "report.html")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(out, summary)


def summarise(
    home: dict[str, Any],
    target: dict[str, Any],
    shift_b: dict[str, Any],
    shift_head: dict[str, Any],
    adapted: AdaptResult,
) -> dict[str, Any]:
    """The figures the demo prints, taken from the reports and shift analyses as written."""
    from medadapt.engine import criterion_text

    return {
        "hospital_a_auroc": home["results"]["model"]["auroc"],
        "hospital_a_test_patients": home["data"]["patients"].get("test", 0),
        "hospital_b_before_auroc": target["results"]["baseline"]["auroc"],
        "hospital_b_after_auroc": target["results"]["model"]["auroc"],
        "hospital_b_test_patients": target["data"]["patients"].get("test", 0),
        "auroc_difference": target["comparison"]["auroc_difference"],
        "kept_method": adapted.kept,
        "decision": adapted.decision.statement,
        "decision_margin": adapted.decision.margin,
        "verdict": target["acceptance"]["verdict"],
        "no_verdict_because": target["acceptance"]["no_verdict_because"],
        "criteria": [
            {"status": c["status"], "text": criterion_text(c)}
            for c in target["acceptance"]["criteria"]
        ],
        "caveat": target["acceptance"].get("caveat"),
        "warnings": [w["text"] for w in target.get("warnings", [])],
        "shift_to_b": shift_b["verdict"],
        "shift_to_b_head": shift_head["verdict"],
    }


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as the demo prints it."""
    from medadapt.engine import interval_text

    criteria = [f"    {c['status'].upper():<12} {c['text']}" for c in summary["criteria"]]
    return "\n".join(
        [
            "Summary (AUROC with 95% patient-bootstrap intervals, on each site's test patients)",
            f"  Hospital A, where the model was trained ({summary['hospital_a_test_patients']} "
            f"patients): {interval_text(summary['hospital_a_auroc'])}",
            f"  Hospital B before adaptation ({summary['hospital_b_test_patients']} patients): "
            f"{interval_text(summary['hospital_b_before_auroc'])}",
            f"  Hospital B after adaptation (auto kept {summary['kept_method']}): "
            f"{interval_text(summary['hospital_b_after_auroc'])}",
            f"  decision: {summary['decision']}",
            f"  difference: {interval_text(summary['auroc_difference'])}",
            f"  shift from A: to B {summary['shift_to_b'].upper()}, to B's head CT "
            f"{summary['shift_to_b_head'].upper()}",
            "  acceptance at Hospital B:",
            *criteria,
            f"  verdict: {summary['verdict'].upper()}",
            *([f"    {summary['caveat']}"] if summary.get("caveat") else []),
            *[f"  warning: {text}" for text in summary.get("warnings", [])],
            *[f"    because {reason}" for reason in summary["no_verdict_because"]],
            f"  report: {summary['report']}",
        ]
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _claim(out: Path, fast: bool) -> bool:
    """Use ``out`` only if it is empty or an earlier demo of the same size; a demo folder of
    an older medadapt (whose runs this one would refuse) is emptied and started afresh.

    Returns:
        Whether an older demo was removed.
    """
    marker = out / "medadapt-demo.json"
    # "demo" counts the layouts of the folder: 2 since each job records its provenance, 3
    # since the simulated hospitals name their folders by case, not by PatientID, 4 since a
    # profile's hash leaves out training.device (every recorded hash changed), 5 since DANN
    # and SHOT changed what they compute (their finished runs are not this medadapt's).
    wanted = {"demo": 5, "fast": fast}
    older = False
    if marker.is_file():
        found = read_json_file(marker, "a demo's marker")
        found = found if isinstance(found, dict) else {}
        if found == wanted:
            return False
        if found.get("demo") == wanted["demo"]:
            raise InvalidInputError(
                f"{out} holds a demo of another size; choose another --out or delete it"
            )
        for entry in out.iterdir():  # the marker says that everything here is the demo's
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        older = True
    elif out.exists() and any(out.iterdir()):
        raise InvalidInputError(
            f"{out} is not empty and holds no demo; choose an empty or new folder with --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted) + "\n")
    return older


def _keep_inside(out: Path) -> None:
    """Point every cache and key the jobs use inside ``out``, so nothing is written elsewhere."""
    # The demo's patients are simulated, so its key is no secret: a fixed one gives the same
    # patients the same splits on every machine (a site's key would change them). The
    # figures can still differ slightly between machines (floating-point kernels).
    os.environ["MEDADAPT_PSEUDONYM_KEY"] = DEMO_KEY
    os.environ["MEDADAPT_CACHE_DIR"] = str(out / "cache")
    os.environ.setdefault("MPLCONFIGDIR", str(out / "cache" / "matplotlib"))


def _profile(out: Path, site: str, shipped: str, folder: Path, size: DemoSize) -> Path:
    """The shipped profile, pointed at the simulated site and sized for this demo."""
    document = yaml.safe_load((shipped_profiles() / shipped).read_text())
    document["data"]["params"]["root"] = str(folder / "dicom")
    document["data"]["label_file"] = str(folder / "labels.csv")
    document["training"]["epochs"] = size.epochs
    if "adaptation" in document:
        document["adaptation"]["candidates"] = size.candidates
    path = out / "profiles" / shipped
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# The demo's copy of hospital_profiles/{shipped}, pointed at its simulated site\n"
        f"# and sized for {'--fast' if size is FAST else 'the full demo'}.\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


@click.command("demo")
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
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary's JSON for machines.")
@click.pass_context
def demo_command(
    ctx: click.Context, out: Path, fast: bool, device: str | None, as_json: bool
) -> None:
    """See medadapt do its whole job on simulated hospitals, with no data of your own.

    Writes Hospital A's and Hospital B's chest CT (different scanners) and B's head CT as
    DICOM with label files, trains at A, measures the shift to B and to B's head CT, adapts
    to B (auto; B's validation labels decide what is kept, no method trains on them),
    validates on B's test patients against the unadapted model, and prints a summary read
    from the reports. Writes nothing outside OUT; running
    it again reuses what is finished.
    """
    quiet = ctx.obj["quiet"] or as_json
    started = time.perf_counter()

    def step(text: str) -> None:
        if not quiet:
            Console(stderr=True).print(f"[{time.perf_counter() - started:5.0f} s] {text}")

    result = run_demo(out, fast=fast, step=step, device=device)
    # Only now: validate imports matplotlib, which the demo first points inside OUT.
    from medadapt.engine import NO_VERDICT, PASS

    if as_json:
        click.echo(strict_json(result.summary))
        return
    step(f"done; everything is in {out}")
    click.echo(summary_text(result.summary))
    verdict = result.summary["verdict"]
    if verdict == NO_VERDICT:
        ctx.exit(ExitCode.NO_VERDICT)
    if verdict != PASS:
        ctx.exit(ExitCode.NOT_PASSED)
