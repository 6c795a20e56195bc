"""TorchScript: ``torch.jit.trace`` of the deployed network; runs with PyTorch alone.

PyTorch has deprecated TorchScript in favour of ``torch.export``; it is written because
deployment tools still take it. The model card is inside the file as ``medadapt/card.json``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from medadapt.engine import Exporter, ModelCard, probe_patches
from medadapt.plugins.export.card import card_text


@contextmanager
def _quiet_deprecation() -> Iterator[None]:
    # PyTorch warns on every TorchScript call that it is deprecated (the module docstring
    # says why it is still written); the warning is for PyTorch users, not for ours.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def write_torchscript(network: nn.Module, card: ModelCard, path: Path) -> None:
    """Trace ``network`` and save it, the card inside the file as ``medadapt/card.json``."""
    example = probe_patches(card, count=2, seed=1)
    with _quiet_deprecation(), torch.no_grad():
        traced = torch.jit.trace(network, example)
        buffer = io.BytesIO()  # in memory first: PyTorch's own writer aborts on a full disk
        torch.jit.save(traced, buffer, _extra_files={"medadapt/card.json": card_text(card)})
    path.write_bytes(buffer.getvalue())


def run_torchscript(path: Path, patches: Tensor) -> np.ndarray:
    """The probabilities a saved TorchScript file gives for ``patches``."""
    with _quiet_deprecation(), torch.no_grad():
        network = torch.jit.load(str(path), map_location="cpu")
        return network(patches).numpy()


class TorchScript(Exporter):
    """One TorchScript file (``torch.jit.trace``) that runs with PyTorch alone."""

    name = "torchscript"
    writes: ClassVar[Literal["file", "folder"]] = "file"
    example = "model.ts"

    def write(
        self, network: nn.Module, card: ModelCard, out: Path, figures: Mapping[str, Any] | None
    ) -> list[str]:
        write_torchscript(network, card, out)
        return []

    def run(self, out: Path, patches: Tensor, notes: list[str]) -> np.ndarray | None:
        return run_torchscript(out, patches)
