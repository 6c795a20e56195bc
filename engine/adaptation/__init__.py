"""Carrying a model to a new site: the ``adapt`` job and its parts.

- :mod:`.access`: what each method may see (the target split, the labels it keeps, source
  data, which methods the data allow);
- :mod:`.runs`: one method at one seed in the engine's loop (its objective, its run folder);
- :mod:`.decision`: how the candidates, the unadapted model always among them, are
  compared and one is kept;
- :mod:`.job`: the job itself, which writes the kept model and ``adapt.json``.
"""

from medadapt.engine.adaptation.access import TargetSplit, target_split
from medadapt.engine.adaptation.job import SUMMARY, AdaptResult, adapt
from medadapt.engine.adaptation.runs import PROBABILITIES, CandidateRun, run_method
from medadapt.engine.contracts.components import UNADAPTED

__all__ = [
    "PROBABILITIES",
    "SUMMARY",
    "UNADAPTED",
    "AdaptResult",
    "CandidateRun",
    "TargetSplit",
    "adapt",
    "run_method",
    "target_split",
]
