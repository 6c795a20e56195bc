"""The contract of an export format: how an adapted model goes out to deployment.

``medadapt model export --format NAME`` loads the model, builds the deployed network
(prepared patches in, one probability per class out), and hands it to the exporter named
NAME, which writes it; the engine then runs what was written on probe patches, through the
exporter, and keeps it only when its probabilities agree with medadapt's own. The built-in
formats (TorchScript, ONNX, a MONAI bundle) are plugins/export/; a vendor's format is a
plugin of the same shape.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from medadapt.engine.contracts.components import Component, ComponentKind

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor, nn

    from medadapt.engine.models.card import ModelCard


class Exporter(Component):
    """One deployment format: writes the deployed network and runs what it wrote.

    ``write`` gets the network in evaluation mode, the model card (to carry inside the file,
    and for the input's shape) and, when the format declares ``takes_report``, the figures
    of the model's validation report. The engine writes into a temporary file or folder
    that becomes ``out`` only after the check passes, so a format never leaves half a file.
    """

    kind = ComponentKind.EXPORTERS
    #: What the export is: one ``file`` (TorchScript, ONNX) or a ``folder`` (a bundle).
    writes: ClassVar[Literal["file", "folder"]]
    #: Whether the figures of a validation report (``--report``) go into the export.
    takes_report: ClassVar[bool] = False
    #: What ``--out`` names, for the command's help: ``model.ts``, ``a bundle folder``.
    example: ClassVar[str] = ""

    @abstractmethod
    def write(
        self,
        network: nn.Module,
        card: ModelCard,
        out: Path,
        figures: Mapping[str, Any] | None,
    ) -> list[str]:
        """Write ``network`` to ``out`` (a file to create, or an empty folder that exists).

        Returns:
            notes for the person exporting (what the export lacks and how to add it).

        Raises:
            InvalidInputError: what the format needs is missing (a package), said with how
                to install it.
        """

    @abstractmethod
    def run(self, out: Path, patches: Tensor, notes: list[str]) -> np.ndarray | None:
        """The probabilities what :meth:`write` made gives for ``patches`` (N x classes).

        None when it cannot be run here (its runtime is not installed); then a note in
        ``notes`` says so, and the export is reported as not checked.
        """

    def refuses_to_replace(self, existing: Path) -> str | None:
        """Why ``existing`` (given with ``--overwrite``) must not be replaced by this export,
        or None: by default a file export replaces a file, a folder export an empty folder."""
        if self.writes == "file" and existing.is_dir():
            return f"a folder; the {self.name} export is one file"
        if self.writes == "folder" and not (existing.is_dir() and not any(existing.iterdir())):
            return f"exists and is not an empty folder; refusing to replace it with a {self.name}"
        return None
