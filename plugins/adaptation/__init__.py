"""The built-in adaptation methods, one file each (docs/adaptation.md).

Without target labels or source data: ``adabn``, ``tent``, ``shot``. With source data (no
target labels): ``dann``, ``coral``, ``mmd``. With target labels: ``finetune``.
"""

from __future__ import annotations

from collections.abc import Sequence

from medadapt.engine import AdaptationMethod, hookimpl
from medadapt.plugins.adaptation.adabn import AdaBN
from medadapt.plugins.adaptation.coral import Coral
from medadapt.plugins.adaptation.dann import DANN
from medadapt.plugins.adaptation.finetune import FineTune
from medadapt.plugins.adaptation.mmd import MMD
from medadapt.plugins.adaptation.shot import SHOT
from medadapt.plugins.adaptation.tent import Tent

__all__ = ["DANN", "MMD", "SHOT", "AdaBN", "Coral", "FineTune", "Tent"]


@hookimpl
def medadapt_adaptation_methods() -> Sequence[type[AdaptationMethod]]:
    return [AdaBN, Tent, SHOT, DANN, Coral, MMD, FineTune]
