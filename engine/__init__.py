"""medadapt's engine: contracts, plugins, profiles and the command line.

A plugin needs only what is exported here::

    from medadapt.engine import SelectionScore, hookimpl
"""

from importlib import metadata

from medadapt.engine.contracts.components import UNADAPTED as UNADAPTED
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
from medadapt.engine.contracts.hookspecs import ReportSection, RunInfo, hookimpl
from medadapt.engine.output.text import csv_row, printable

__version__ = metadata.version("medadapt")

__all__ = [
    "UNADAPTED",
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
    "Image",
    "InvalidInputError",
    "LabelProperty",
    "MedadaptError",
    "NoParams",
    "PluginError",
    "ProfilePath",
    "Rejection",
    "ReportSection",
    "RunInfo",
    "SampleRecord",
    "ScanResult",
    "SelectionScore",
    "SourceValidation",
    "Split",
    "__version__",
    "csv_row",
    "hookimpl",
    "printable",
]
