"""The hooks a medadapt plugin can implement.

A plugin is a module (or object) with functions named after these hooks and decorated with
:data:`hookimpl`. Built-in plugins use exactly the same hooks as third-party ones. Every
hook here has a section in docs/hooks.md; a test fails when one is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from medadapt.engine.contracts.components import (
        AdaptationMethod,
        Augmentation,
        Backbone,
        DataSource,
        DecisionRule,
        SelectionScore,
    )
    from medadapt.engine.contracts.exporter import Exporter

PROJECT_NAME = "medadapt"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate a plugin's hook functions with this marker.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class RunInfo:
    """The job that ``medadapt_epoch_end`` observers are told about.

    Attributes:
        job: the job's name (``train``, ``adapt``, ...).
        site: the site name from the profile.
        output_dir: the folder the job writes its model and checkpoints to.
        seed: the seed that drives every random number generator of the run.
    """

    job: str
    site: str
    output_dir: Path
    seed: int


@dataclass(frozen=True)
class ReportSection:
    """An extra section of the clinician report.

    Attributes:
        title: the section heading, in words a clinician understands.
        html: the section body; text from data must be escaped by the plugin.
        order: sections are placed by ascending order after the built-in ones.
    """

    title: str
    html: str
    order: int = 100


# -------------------------------------------------------------------------
# Discovery hooks: each returns the component classes a plugin provides
# -------------------------------------------------------------------------


@hookspec
def medadapt_data_sources() -> Sequence[type[DataSource]]:
    """Return the data sources this plugin provides.

    A data source turns a site's files into samples: ``scan()`` reads metadata and rejects
    bad inputs with a reason, ``load(record)`` reads HU pixels.

    :return: DataSource subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_augmentations() -> Sequence[type[Augmentation]]:
    """Return the augmentations this plugin provides.

    Each declares in ``preserves`` which image properties it keeps, so the engine can refuse
    it for a task whose labels depend on something it changes.

    :return: Augmentation subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_backbones() -> Sequence[type[Backbone]]:
    """Return the backbones (feature extractors) this plugin provides.

    :return: Backbone subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_adaptation_methods() -> Sequence[type[AdaptationMethod]]:
    """Return the adaptation methods this plugin provides.

    Each declares whether it needs source data and target labels; the engine checks a
    profile against that before any work starts.

    :return: AdaptationMethod subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_selection_scores() -> Sequence[type[SelectionScore]]:
    """Return the label-free model-selection scores this plugin provides.

    :return: SelectionScore subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_decision_rules() -> Sequence[type[DecisionRule]]:
    """Return the decision rules this plugin provides.

    A decision rule is how ``adapt --method auto`` chooses among its candidates, the
    unadapted model always among them: it sees every candidate's predictions on the target
    validation patients (and their labels, where the site gave them) and returns the
    candidate kept and one sentence saying what that rests on. A rule that declares
    ``needs_labels`` is used only with ``adaptation.target_labels: validation`` (or
    ``all``); a label-free rule's choice is reported as a proposal.

    :return: DecisionRule subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


@hookspec
def medadapt_exporters() -> Sequence[type[Exporter]]:
    """Return the export formats this plugin provides.

    An exporter writes an adapted model for deployment (``medadapt model export --format
    NAME``) and runs what it wrote, so the engine can check it on probe patches against
    medadapt's own probabilities before keeping it. The built-in ones are ``torchscript``,
    ``onnx`` and ``monai-bundle``.

    :return: Exporter subclasses; each ``name`` must be unique across all plugins.

    All implementations are called and their lists joined.
    """


# -------------------------------------------------------------------------
# Lifecycle hooks: observe and extend a job without editing the engine
# -------------------------------------------------------------------------


@hookspec
def medadapt_epoch_end(run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> bool | None:
    """Called after each training or adaptation epoch.

    :param run: the job that is running.
    :param epoch: the epoch just finished, counting from 1.
    :param metrics: what the loop measured in this epoch (losses, selection score), by name.
    :return: ``True`` to ask the loop to stop after this epoch (early stopping);
        ``None`` or ``False`` to let it go on.

    All implementations are called; the loop stops if any returns ``True``.
    """


@hookspec
def medadapt_report_sections(context: Mapping[str, Any]) -> Sequence[ReportSection] | None:
    """Add sections to the clinician validation report.

    :param context: the measured results the report is built from (read-only); it holds
        no identifying patient data.
    :return: the sections to add, or ``None`` for none.

    All implementations are called and their sections joined, sorted by ``order``.
    """


@hookspec
def medadapt_commands(cli: click.Group) -> None:
    """Register extra commands on the ``medadapt`` command line.

    :param cli: the top-level click group; call ``cli.add_command(...)`` or decorate with
        ``@cli.command()``.

    Called once, before the command line is parsed.
    """
