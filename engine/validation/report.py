"""The clinician report: one self-contained HTML file, and the JSON it is rendered from.

Every number in report.html is read from the same dictionary that is written as
report.json, so the two cannot disagree. Figures are drawn with matplotlib and embedded as
PNG data, so the file can be mailed, archived and printed on its own. Plugins add sections
through the ``medadapt_report_sections`` hook; their HTML is placed after the built-in
sections.
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from medadapt.engine.contracts.hookspecs import ReportSection
from medadapt.engine.data.augment import Preview, draw_preview
from medadapt.engine.data.pseudonym import data_paths
from medadapt.engine.models.model import atomic_file, write_json_atomic
from medadapt.engine.output.text import pyplot

TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"
COLOURS = {"model": "#1b6ca8", "baseline": "#a0a0a0", "fail": "#b3261e"}
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


@dataclass(frozen=True)
class ReportImages:
    """What report.html shows beside report.json's figures, drawn by ``validate`` from its
    data: the failure examples as windowed middle slices (values in [0, 1], in the order of
    ``report["failures"]["examples"]``) and the augmentation preview, when there is one."""

    failures: list[np.ndarray] = field(default_factory=list)
    augmentations: Preview | None = None


def write_report(
    report: dict[str, Any],
    out_dir: Path,
    formats: Sequence[str],
    images: ReportImages,
    sections: Sequence[ReportSection],
) -> None:
    """Write report.json and, when ``formats`` holds "html", report.html into ``out_dir``.

    Everything drawn comes from ``report`` and ``images``: the report reads no data."""
    if "json" in formats:
        write_json_atomic(out_dir / REPORT_JSON, report)
    if "html" not in formats:
        return
    figures = {
        "roc": _roc_figure(report),
        "calibration": _calibration_figure(report),
        "curves": _curves_figure(report["training"]),
        "failures": _failures_figure(report, images.failures),
        "augmentations": _augmentation_figure(images.augmentations),
        "shift": _shift_figure(report["shift"]),
    }
    html = data_paths(render(data_paths.json(report), figures, sections))
    with atomic_file(out_dir / REPORT_HTML) as temporary:
        temporary.write_text(html, encoding="utf-8")


def render(report: Mapping[str, Any], figures: Mapping[str, str | None], sections: Any) -> str:
    """The HTML page for ``report`` (figures as data URIs, plugin sections appended)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["num"] = _number
    environment.filters["pct"] = _percent
    environment.filters["ci"] = interval_text
    environment.filters["words"] = lambda text: str(text).replace("_", " ")
    page = environment.get_template(TEMPLATE.name)
    return page.render(
        r=report, figures=figures, sections=sorted(sections, key=lambda s: s.order), markup=_markup
    )


def _markup(html: str) -> Any:
    """A plugin section's HTML, which the plugin has escaped (hook contract)."""
    from markupsafe import Markup

    return Markup(html)


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def interval_text(estimate: Mapping[str, Any] | None, percent: bool = False) -> str:
    """ "0.912 (0.871 to 0.950)" or "n/a"; the interval is left out when it was not given."""
    if not estimate or estimate.get("value") is None:
        return "n/a"
    show = _percent if percent else _number
    text = show(estimate["value"])
    if estimate.get("low") is not None:
        text += f" ({show(estimate['low'])} to {show(estimate['high'])})"
    return text


# --- figures -------------------------------------------------------------------------------


def _figure(width: float = 5.0, height: float = 4.0, columns: int = 1) -> tuple[Any, Any]:
    return pyplot().subplots(1, columns, figsize=(width, height), dpi=110)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _roc_figure(report: Mapping[str, Any]) -> str:
    fig, ax = _figure()
    # The baseline first, so the model's curve is drawn on top of it.
    for name in sorted(report["results"], key=lambda n: n == "model"):
        measured = report["results"][name]
        roc = measured["roc"]
        ax.plot(
            roc["false_positive_rate"],
            roc["true_positive_rate"],
            color=COLOURS.get(name),
            label=f"{name} (AUROC {_number(measured['auroc']['value'])})",
        )
        op = measured["specificity"]["value"], measured["sensitivity"]["value"]
        if None not in op:
            ax.plot(1 - op[0], op[1], "o", color=COLOURS.get(name))
    ax.plot([0, 1], [0, 1], ":", color="#888888", label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC curve on the test patients (dot: operating point)")
    ax.legend(loc="lower right")
    return _png(fig)


def _calibration_figure(report: Mapping[str, Any]) -> str:
    fig, ax = _figure()
    measured = report["results"]["model"]
    tables = [("model", measured["reliability"], COLOURS["model"])]
    if "recalibrated" in measured:
        tables.append(("after temperature", measured["recalibrated"]["reliability"], "#d9822b"))
    for name, table, colour in tables:
        rows = [row for row in table if row["n"]]
        ax.plot(
            [row["predicted"] for row in rows],
            [row["observed"] for row in rows],
            "o-",
            color=colour,
            label=name,
        )
    # How many test samples each of the model's bins holds: a bin of three samples can
    # only say 0, 1/3, 2/3 or 1, which is what makes a diagram zig-zag.
    for row in (row for row in measured["reliability"] if row["n"]):
        ax.annotate(
            f"n={row['n']}",
            (row["predicted"], row["observed"]),
            textcoords="offset points",
            xytext=(0, 7),
            ha="center",
            fontsize=7,
            color=COLOURS["model"],
        )
    ax.plot([0, 1], [0, 1], ":", color="#888888", label="perfect calibration")
    ax.set(xlabel="predicted probability", ylabel="observed share positive", xlim=(0, 1))
    ax.set_ylim(0, 1.08)
    ax.set_title("Reliability diagram (10 bins; n: test samples in the bin)")
    ax.legend(loc="upper left")
    return _png(fig)


def _curves_figure(curves: Mapping[str, list[Mapping[str, Any]]]) -> str | None:
    """Loss and validation AUROC per epoch, one panel per phase (training, adaptation)."""
    if not curves:
        return None
    fig, axes = _figure(5.0 * len(curves), 3.2, columns=len(curves))
    for ax, (phase, history) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        epochs = [row["epoch"] for row in history]
        for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss")):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], "o-", label=label)
        ax.set(xlabel="epoch", ylabel="loss", title=phase)
        # The epoch's judge on a second axis: the validation AUROC where labels measured
        # it, else the label-free selection score; no second axis when there is neither.
        other = None
        for key, label, axis in (
            ("val_auroc", "validation AUROC", "AUROC"),
            ("val_score", "selection score (label-free)", "selection score"),
        ):
            values = [row.get(key) for row in history]
            if any(v is not None for v in values):
                other = ax.twinx()
                other.plot(
                    epochs,
                    [np.nan if v is None else v for v in values],
                    "s--",
                    color="#2a9d55",
                    label=label,
                )
                other.set_ylabel(axis)
                if key == "val_auroc":
                    other.set_ylim(0, 1)
                break
        handles, labels = ax.get_legend_handles_labels()
        more, names = other.get_legend_handles_labels() if other else ([], [])
        if handles or more:
            ax.legend(handles + more, labels + names, loc="lower left", fontsize=8)
    return _png(fig)


def _failures_figure(report: Mapping[str, Any], thumbnails: list[np.ndarray]) -> str | None:
    """Thumbnails of the most confident errors, missed positives first: windowed pixels
    only, no header text; each titled with its kind, probability and the threshold."""
    failures = report["failures"]
    examples = failures["examples"]
    if not examples:
        return None
    fig, axes = _figure(2.0 * len(examples), 2.6, columns=len(examples))
    axes = np.atleast_1d(axes)
    for ax, failure, thumbnail in zip(axes, examples, thumbnails, strict=True):
        ax.imshow(thumbnail, cmap="gray", vmin=0.0, vmax=1.0)
        relation = "<" if failure["score"] < failures["threshold"] else ">="
        ax.set_title(
            f"{failure['kind']}\np = {failure['score']:.2f} {relation} {failures['threshold']:.2f}",
            fontsize=8,
            color=COLOURS["fail"] if failure["kind"].startswith("missed") else "black",
        )
        ax.axis("off")
    return _png(fig)


def _augmentation_figure(shown: Preview | None) -> str | None:
    """The profile's augmentations on a few validation samples (engine/data/augment.py)."""
    if shown is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = draw_preview(shown, Path(folder) / "p.png")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _shift_figure(shift: Mapping[str, Any] | None) -> str | None:
    """HU histograms of the two sites, when the shift analysis has them."""
    if not shift or not shift.get("hu_histograms"):
        return None
    histograms = shift["hu_histograms"]
    fig, ax = _figure(6.0, 3.2)
    edges = np.asarray(histograms["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    for name, colour in (("source", COLOURS["baseline"]), ("target", COLOURS["model"])):
        ax.plot(centres, histograms[name], color=colour, label=shift["sites"][name])
    ax.set(xlabel="HU", ylabel="share of voxels")
    ax.set_title("HU distribution in the model's patches")
    ax.legend()
    return _png(fig)
