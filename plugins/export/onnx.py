"""ONNX: torch.onnx's exporter (``dynamo=True``), the model card in the file's metadata.

It needs the ``onnx`` and ``onnxscript`` packages (``pip install 'medadapt[onnx]'``); the
file is checked with onnxruntime when that is installed, and said plainly when it is not.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from medadapt.engine import Exporter, InvalidInputError, ModelCard, probe_patches
from medadapt.plugins.export.card import card_text, input_text


def write_onnx(network: nn.Module, card: ModelCard, path: Path) -> None:
    """Export ``network`` to one ONNX file (batch size free), the card in its metadata."""
    missing = [name for name in ("onnx", "onnxscript") if not _installed(name)]
    if missing:
        raise InvalidInputError(
            f"ONNX export needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}, which medadapt does not install by default: "
            "pip install 'medadapt[onnx]'"
        )
    import onnx

    example = probe_patches(card, count=2, seed=1)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notes on its internals
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["patches"],
            output_names=["probabilities"],
            dynamic_shapes={"patches": {0: batch}},
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    for key, value in _onnx_metadata(card).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _onnx_metadata(card: ModelCard) -> dict[str, str]:
    return {
        "medadapt_card": card_text(card),
        "classes": json.dumps(card.classes),
        "positive_class": card.positive_class,
        "input": input_text(card),
    }


def run_onnx(path: Path, patches: Tensor) -> np.ndarray:
    """The probabilities an ONNX file gives for ``patches``, through onnxruntime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"patches": patches.numpy()})[0]


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


class Onnx(Exporter):
    """One ONNX file (batch size free) that any ONNX runtime runs."""

    name = "onnx"
    writes: ClassVar[Literal["file", "folder"]] = "file"
    example = "model.onnx"

    def write(
        self, network: nn.Module, card: ModelCard, out: Path, figures: Mapping[str, Any] | None
    ) -> list[str]:
        write_onnx(network, card, out)
        return []

    def run(self, out: Path, patches: Tensor, notes: list[str]) -> np.ndarray | None:
        if not _installed("onnxruntime"):
            notes.append(
                "not checked: onnxruntime is not installed, so the ONNX file was not run here "
                "(pip install onnxruntime, then export again to check it)"
            )
            return None
        return run_onnx(out, patches)
