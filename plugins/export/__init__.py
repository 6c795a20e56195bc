"""The built-in export formats (``medadapt model export --format``): ``torchscript``,
``onnx`` and ``monai-bundle``, one file each, registered as a third party's would be."""

from __future__ import annotations

from collections.abc import Sequence

from medadapt.engine import Exporter, hookimpl
from medadapt.plugins.export.bundle import MonaiBundle
from medadapt.plugins.export.onnx import Onnx
from medadapt.plugins.export.torchscript import TorchScript

__all__ = ["MonaiBundle", "Onnx", "TorchScript"]


@hookimpl
def medadapt_exporters() -> Sequence[type[Exporter]]:
    return [TorchScript, Onnx, MonaiBundle]
