"""Loading pretrained weights safely: safetensors, or PyTorch files that hold only weights.

A pickled PyTorch file can run arbitrary code when it is loaded. medadapt loads
``.safetensors`` files, and ``.pt``/``.pth`` files only through ``torch.load`` with
``weights_only=True``, which refuses anything but tensors and plain containers. Nothing is
ever downloaded: ImageNet weights are read from the torch hub cache, and a missing file
gets a message saying where to put it.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from medadapt.engine.contracts.errors import InvalidInputError

if TYPE_CHECKING:
    from torch import nn


def torch_load_weights_only(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers (no code can run)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_file(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, refusing anything that could run code.

    Raises:
        InvalidInputError: the file is missing, pickled with code, or of an unknown format.
    """
    if not path.is_file():
        raise InvalidInputError(f"{path}: the weights file does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise InvalidInputError(f"{path}: not a readable safetensors file ({exc})") from None
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise InvalidInputError(
            f"{path}: unknown weights format {path.suffix!r}; expected .safetensors, or a "
            ".pt/.pth file saved with weights only"
        )
    try:
        loaded = torch_load_weights_only(path)
    except OSError:
        raise  # the machine's refusal (permissions, a failing disk), said as such
    except pickle.UnpicklingError as exc:
        if not _is_checkpoint(path):  # the bytes of something else, no Python objects
            raise _not_weights(path, exc) from None
        raise InvalidInputError(
            f"{path}: refused: {unsafe_contents(path)}, and loading it would run code from "
            "the file. Where the file is trusted, save only the weights: "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), or "
            "torch.save(model.state_dict(), 'weights.pt')"
        ) from None
    except Exception as exc:
        # PyTorch's readers fail on foreign bytes in many ways (KeyError, IndexError,
        # EOFError, RuntimeError, ...): each means the same to the user.
        raise _not_weights(path, exc) from None
    # A training checkpoint holds the state dict under a name: "state_dict" (Lightning and
    # most scripts) or "model" (MONAI's CheckpointSaver, as bundles' models/model.pt).
    for entry in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(entry), Mapping):
            loaded = loaded[entry]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise InvalidInputError(f"{path}: expected a mapping of names to tensors (a state dict)")
    return {_strip(str(key)): value for key, value in loaded.items()}


def _is_checkpoint(path: Path) -> bool:
    """Whether the file is a PyTorch checkpoint at all (its pickled objects can be listed)."""
    try:
        torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return False
    return True


def _not_weights(path: Path, exc: Exception) -> InvalidInputError:
    return InvalidInputError(
        f"{path}: not a PyTorch weights file (reading it failed with {type(exc).__name__}: "
        f"{str(exc)[:120]}); expected a state dict saved with "
        "torch.save(model.state_dict(), ...), or a .safetensors file"
    )


def unsafe_contents(path: Path) -> str:
    """What a refused file holds beyond tensors, in medadapt's words (PyTorch's own message
    advises loading it anyway, and carries terminal colour codes)."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not even a readable checkpoint
        return "it is not a PyTorch weights file that can be read without running code"
    if not names:
        return "it holds Python objects, not only tensors"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"it holds pickled Python objects ({shown}), not only tensors (a whole model saved "
        "with torch.save(model) does)"
    )


def load_matching(
    module: nn.Module, state_dict: Mapping[str, Tensor], what: str, skip: str = ""
) -> None:
    """Load weights into ``module``, refusing names or shapes that do not fit.

    Args:
        module: the network to load into.
        state_dict: the weights.
        what: what they must fit, for the message ("the backbone 'resnet18'").
        skip: a name prefix to ignore on both sides (a pretrained network's classifier).

    Raises:
        InvalidInputError: names missing, names unexpected or shapes that differ, each named
            (the first four of each kind).
    """

    def kept(name: str) -> bool:
        return not (skip and name.startswith(skip))

    wanted = {k: v for k, v in state_dict.items() if kept(k)}
    own = {k: v for k, v in module.state_dict().items() if kept(k)}
    missing = sorted(set(own) - set(wanted))
    unexpected = sorted(set(wanted) - set(own))
    wrong = sorted(k for k in set(own) & set(wanted) if own[k].shape != wanted[k].shape)
    if missing or unexpected or wrong:
        details = [
            f"{label}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected))
            if names
        ]
        details += [
            f"wrong shape: {k} {tuple(wanted[k].shape)}, expected {tuple(own[k].shape)}"
            for k in wrong[:4]
        ]
        raise InvalidInputError(f"the weights do not fit {what} ({'; '.join(details)})")
    module.load_state_dict(wanted, strict=not skip)


def hub_cache_file(url: str) -> Path:
    """Where torch keeps the file downloaded from ``url``: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_imagenet_weights(backbone: str, url: str | None) -> dict[str, Tensor]:
    """torchvision's ImageNet weights for a backbone, from the torch hub cache only.

    Raises:
        InvalidInputError: the backbone has no ImageNet weights, or the file is not cached;
            the message says which file, where to put it and how to get it.
    """
    if url is None:
        raise InvalidInputError(
            f"the backbone {backbone!r} has no ImageNet weights; use weights: none, or a "
            "local weights file"
        )
    file = hub_cache_file(url)
    if not file.is_file():
        raise InvalidInputError(
            f"the ImageNet weights of {backbone!r} are not on this machine: {file} is missing, "
            "and medadapt never downloads at run time. On a machine with internet, run\n"
            f"    python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\"\n"
            f"then copy {file.name} from that machine's ~/.cache/torch/hub/checkpoints/ into "
            f"{file.parent}/ here (or set TORCH_HOME to a folder holding hub/checkpoints/"
            f"{file.name}). Or use weights: none to train from scratch."
        )
    return load_weights_file(file)


def adapt_input_channels(weight: Tensor, in_channels: int) -> Tensor:
    """First-convolution weights for three channels, adapted to ``in_channels``.

    One channel gets the sum over the three colour channels, so that a grey image gives the
    same response as the same image repeated in red, green and blue; other counts get the
    mean repeated and rescaled the same way.

    Example:
        >>> adapt_input_channels(torch.ones(4, 3, 3, 3), 1).shape
        torch.Size([4, 1, 3, 3])
    """
    if weight.shape[1] == in_channels:
        return weight
    summed = weight.sum(dim=1, keepdim=True)
    if in_channels == 1:
        return summed
    return summed.repeat(1, in_channels, *([1] * (weight.dim() - 2))) / in_channels


def _strip(key: str) -> str:
    """Drop the 'module.' prefix DistributedDataParallel adds to every name."""
    return key.removeprefix("module.")
