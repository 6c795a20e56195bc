"""medadapt's engine: its public API, everything a plugin, an example or a benchmark may use.

A plugin needs only what is exported here::

    from medadapt.engine import SelectionScore, hookimpl

The contracts (component classes, hooks, errors) and the small helpers every plugin uses are
imported with the package; the jobs, metrics and model helpers, which bring PyTorch and
scikit-learn with them, are imported the first time they are used (PEP 562). Everything else
under ``medadapt.engine`` is internal: its names and modules change without notice, and
``make lint`` refuses an import of it from plugins/ or examples/ (docs/plugins.md).
"""

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

from medadapt.engine.contracts.components import UNADAPTED as UNADAPTED
from medadapt.engine.contracts.components import UNLABELLED as UNLABELLED
from medadapt.engine.contracts.components import (
    AdaptationMethod,
    Augmentation,
    Backbone,
    Candidate,
    Component,
    ComponentKind,
    DataSource,
    Decision,
    DecisionRule,
    Evidence,
    Image,
    LabelProperty,
    NoParams,
    ProfilePath,
    Rejection,
    SampleRecord,
    ScanResult,
    SelectionScore,
    SourceValidation,
    Split,
)
from medadapt.engine.contracts.errors import ExitCode, InvalidInputError, MedadaptError, PluginError
from medadapt.engine.contracts.exporter import Exporter
from medadapt.engine.contracts.hookspecs import ReportSection, RunInfo, hookimpl
from medadapt.engine.contracts.wording import did_you_mean
from medadapt.engine.data.pseudonym import PathScrubber, Pseudonymizer
from medadapt.engine.output.progress import progress_bar
from medadapt.engine.output.text import csv_row, plain_row, printable, read_json_file, strict_json

__version__ = metadata.version("medadapt")

#: Public names imported on first use: name -> the internal module that defines it.
_LAZY = {
    # metrics a decision rule or a score computes with
    "PatientBootstrap": "medadapt.engine.validation.metrics",
    "auroc": "medadapt.engine.validation.metrics",
    "rank_auroc": "medadapt.engine.validation.metrics",
    "resampled_auroc": "medadapt.engine.validation.metrics",
    # what an adaptation method or a backbone builds on
    "FeatureAlignment": "medadapt.engine.contracts.alignment",
    "supervised_loss": "medadapt.engine.contracts.alignment",
    "adapt_input_channels": "medadapt.engine.models.weights",
    "batch_norm_layers": "medadapt.engine.training.batchnorm",
    "load_matching": "medadapt.engine.models.weights",
    "recompute_batch_norm": "medadapt.engine.training.batchnorm",
    # what an export format writes and checks
    "ModelCard": "medadapt.engine.models.card",
    "in_channels": "medadapt.engine.models.model",
    "patch_shape": "medadapt.engine.models.model",
    "probe_patches": "medadapt.engine.models.export",
    "torch_bytes": "medadapt.engine.models.model",
    # the jobs, as the command line runs them
    "AdaptResult": "medadapt.engine.adaptation",
    "CHECKPOINT": "medadapt.engine.training.checkpoints",
    "Profile": "medadapt.engine.profile",
    "ProfileError": "medadapt.engine.profile",
    "TrainResult": "medadapt.engine.training.job",
    "ValidationResult": "medadapt.engine.validation.job",
    "adapt": "medadapt.engine.adaptation",
    "analyse_shift": "medadapt.engine.shift",
    "PluginHost": "medadapt.engine.contracts.host",
    "get_plugin_host": "medadapt.engine.contracts.host",
    "load_profile": "medadapt.engine.profile",
    "train": "medadapt.engine.training.job",
    "validate": "medadapt.engine.validation.job",
    # a plugin's own command
    "device_option": "medadapt.engine.cli.base",
    # reading a validation report
    "FAIL": "medadapt.engine.validation.acceptance",
    "NO_VERDICT": "medadapt.engine.validation.acceptance",
    "PASS": "medadapt.engine.validation.acceptance",
    "criterion_text": "medadapt.engine.validation.acceptance",
    "interval_text": "medadapt.engine.validation.report",
}

if TYPE_CHECKING:
    from medadapt.engine.adaptation import AdaptResult, adapt
    from medadapt.engine.cli.base import device_option
    from medadapt.engine.contracts.alignment import FeatureAlignment, supervised_loss
    from medadapt.engine.contracts.host import PluginHost, get_plugin_host
    from medadapt.engine.models.card import ModelCard
    from medadapt.engine.models.export import probe_patches
    from medadapt.engine.models.model import in_channels, patch_shape, torch_bytes
    from medadapt.engine.models.weights import adapt_input_channels, load_matching
    from medadapt.engine.profile import Profile, ProfileError, load_profile
    from medadapt.engine.shift import analyse_shift
    from medadapt.engine.training.batchnorm import batch_norm_layers, recompute_batch_norm
    from medadapt.engine.training.checkpoints import CHECKPOINT
    from medadapt.engine.training.job import TrainResult, train
    from medadapt.engine.validation.acceptance import FAIL, NO_VERDICT, PASS, criterion_text
    from medadapt.engine.validation.job import ValidationResult, validate
    from medadapt.engine.validation.metrics import (
        PatientBootstrap,
        auroc,
        rank_auroc,
        resampled_auroc,
    )
    from medadapt.engine.validation.report import interval_text


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medadapt.engine' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CHECKPOINT",
    "FAIL",
    "NO_VERDICT",
    "PASS",
    "UNADAPTED",
    "UNLABELLED",
    "AdaptResult",
    "AdaptationMethod",
    "Augmentation",
    "Backbone",
    "Candidate",
    "Component",
    "ComponentKind",
    "DataSource",
    "Decision",
    "DecisionRule",
    "Evidence",
    "ExitCode",
    "Exporter",
    "FeatureAlignment",
    "Image",
    "InvalidInputError",
    "LabelProperty",
    "MedadaptError",
    "ModelCard",
    "NoParams",
    "PathScrubber",
    "PatientBootstrap",
    "PluginError",
    "PluginHost",
    "Profile",
    "ProfileError",
    "ProfilePath",
    "Pseudonymizer",
    "Rejection",
    "ReportSection",
    "RunInfo",
    "SampleRecord",
    "ScanResult",
    "SelectionScore",
    "SourceValidation",
    "Split",
    "TrainResult",
    "ValidationResult",
    "__version__",
    "adapt",
    "adapt_input_channels",
    "analyse_shift",
    "auroc",
    "batch_norm_layers",
    "criterion_text",
    "csv_row",
    "device_option",
    "did_you_mean",
    "get_plugin_host",
    "hookimpl",
    "in_channels",
    "interval_text",
    "load_matching",
    "load_profile",
    "patch_shape",
    "plain_row",
    "printable",
    "probe_patches",
    "progress_bar",
    "rank_auroc",
    "read_json_file",
    "recompute_batch_norm",
    "resampled_auroc",
    "strict_json",
    "supervised_loss",
    "torch_bytes",
    "train",
    "validate",
]
