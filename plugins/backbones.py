"""Built-in backbones: torchvision ResNets, MONAI's DenseNet-121 and 3D ResNet-18, and a
small CNN.

Every backbone returns a feature extractor ending in global average pooling, so the engine
can put the same kind of head on any of them. CT patches have one channel (2D, 3D) or
three (2.5D: adjacent slices); ImageNet weights have three, and the first convolution is
adapted (see :func:`medadapt.engine.models.weights.adapt_input_channels`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medadapt.engine import Backbone, did_you_mean, hookimpl

if TYPE_CHECKING:
    from torch import Tensor, nn

# PyTorch, torchvision and MONAI are imported when a network is built, not when the plugin
# loads, so that commands that train nothing start in a fraction of a second.


def _load_published(
    net: nn.Module,
    state_dict: Mapping[str, Tensor] | None,
    in_channels: int,
    backbone: str,
    first: str,
    skip: str,
) -> None:
    """Load weights in the layout the network publishes into it: the first convolution
    (``first``) adapted to ``in_channels``, the published classifier (``skip``) left out."""
    if state_dict is None:
        return
    from medadapt.engine import adapt_input_channels, load_matching

    weights = dict(state_dict)
    if first in weights:
        weights[first] = adapt_input_channels(weights[first], in_channels)
    load_matching(net, weights, f"the backbone {backbone!r}", skip=skip)


def _resnet_features(net: nn.Module, activation: nn.Module, pool: nn.Module) -> nn.Sequential:
    """A ResNet's layers as medadapt's stages, ending in pooled, flat features."""
    from torch import nn

    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(net.conv1, net.bn1, activation, net.maxpool),
            stage1=net.layer1,
            stage2=net.layer2,
            stage3=net.layer3,
            stage4=net.layer4,
            pool=pool,
            flatten=nn.Flatten(),
        )
    )


class _Stages:
    """For a backbone whose stages are the named children of its features (``stem``,
    ``stage1`` ...: its ``stage_names``)."""

    def stages(self, features: nn.Module) -> dict[str, list[nn.Module]]:
        return {name: [getattr(features, name)] for name in self.stage_names}


class _ResNet(_Stages, Backbone):
    spatial_dims = frozenset({2})
    classifier_prefix = "fc."
    stage_names = ("stem", "stage1", "stage2", "stage3", "stage4")
    architecture: str

    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        import torchvision
        from torch import nn

        net = getattr(torchvision.models, self.architecture)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        _load_published(net, state_dict, in_channels, self.name, "conv1.weight", "fc.")
        return _resnet_features(net, net.relu, nn.AdaptiveAvgPool2d(1)), net.fc.in_features


class ResNet18(_ResNet):
    """ResNet-18 (torchvision): 11 M parameters, 512 features; a good default."""

    name = "resnet18"
    architecture = "resnet18"
    bundle_networks = frozenset({"torchvision.models.resnet18"})
    imagenet_url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"  # IMAGENET1K_V1


class ResNet50(_ResNet):
    """ResNet-50 (torchvision): 24 M parameters, 2048 features."""

    name = "resnet50"
    architecture = "resnet50"
    bundle_networks = frozenset({"torchvision.models.resnet50"})
    imagenet_url = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"  # IMAGENET1K_V2


class DenseNet121(Backbone):
    """DenseNet-121 (MONAI) for 2D or 3D patches: 7 M parameters, 1024 features."""

    name = "densenet121"
    spatial_dims = frozenset({2, 3})
    classifier_prefix = "class_layers.out."
    bundle_networks = frozenset(
        f"{prefix}{name}"
        for prefix in ("", "monai.networks.nets.", "monai.networks.nets.densenet.")
        for name in ("DenseNet121", "Densenet121", "densenet121")
    )
    min_patch_size = 32
    stage_names = ("stem", "stage1", "stage2", "stage3", "stage4")
    _stage_modules = {
        "stem": ("conv0", "norm0", "relu0", "pool0"),
        "stage1": ("denseblock1", "transition1"),
        "stage2": ("denseblock2", "transition2"),
        "stage3": ("denseblock3", "transition3"),
        "stage4": ("denseblock4", "norm5"),
    }

    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        from monai.networks.nets import DenseNet121 as MonaiDenseNet121
        from torch import nn

        net = MonaiDenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=2)
        first = "features.conv0.weight"
        _load_published(net, state_dict, in_channels, self.name, first, "class_layers.")
        pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        features = nn.Sequential(
            OrderedDict(features=net.features, relu=nn.ReLU(), pool=pool, flatten=nn.Flatten())
        )
        return features, net.class_layers.out.in_features

    def stages(self, features: nn.Module) -> dict[str, list[nn.Module]]:
        body = features.features
        return {
            stage: [getattr(body, name) for name in names]
            for stage, names in self._stage_modules.items()
        }


class ResNet18Volume(_Stages, Backbone):
    """ResNet-18 for volumes (MONAI's 3D ResNet): 33 M parameters, 512 features.

    ``widen_factor`` scales every layer's width (0.25 gives 2 M parameters and 128
    features, for small data and CPUs).
    """

    name = "resnet18-3d"
    spatial_dims = frozenset({3})
    classifier_prefix = "fc."
    bundle_networks = frozenset(
        f"{prefix}{name}"
        for prefix in ("", "monai.networks.nets.", "monai.networks.nets.resnet.")
        for name in ("resnet18",)
    )
    stage_names = ("stem", "stage1", "stage2", "stage3", "stage4")

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        widen_factor: float = Field(default=1.0, gt=0, le=4, description="layer width scale")

    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        from monai.networks.nets import resnet18

        net = resnet18(
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            widen_factor=self.params.widen_factor,
            num_classes=2,
        )
        _load_published(net, state_dict, in_channels, self.name, "conv1.weight", "fc.")
        return _resnet_features(net, net.act, net.avgpool), net.fc.in_features


def _timm() -> Any:
    try:
        import timm
    except ModuleNotFoundError:
        raise ValueError(
            "timm backbones need the timm package, which medadapt does not install by "
            "default: pip install 'medadapt[timm]'"
        ) from None
    return timm


class Timm(Backbone):
    """Any timm architecture for slice patches: ``timm:<arch>`` (``timm:efficientnet_lite0``).

    The network is built without its classifier and without downloading anything; weights
    come only from ``backbone.weights`` (a local file in timm's own layout: its first
    convolution is adapted to the patch's channels, its classifier left out). The stage a
    profile may freeze is ``stem``, as timm's ``group_matcher`` names it.
    """

    name = "timm"
    variant_param = "arch"
    spatial_dims = frozenset({2})
    stage_names = ("stem",)

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        arch: str = Field(description="the timm architecture (timm.list_models())")

        @field_validator("arch")
        @classmethod
        def _known(cls, arch: str) -> str:
            known = _timm().list_models()
            if arch not in known:
                raise ValueError(
                    f"timm has no architecture {arch!r}{did_you_mean(arch, known)} "
                    "(timm.list_models() lists them)"
                )
            return arch

    @property
    def classifier_prefix(self) -> str | None:  # type: ignore[override]
        """Where timm keeps this architecture's classifier (``fc.``, ``classifier.``)."""
        name = self._config().get("classifier")
        return f"{name}." if isinstance(name, str) else None

    def _config(self) -> dict[str, Any]:
        net = _timm().create_model(self.params.arch, pretrained=False, num_classes=0)
        return dict(net.pretrained_cfg)

    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        net = _timm().create_model(
            self.params.arch, pretrained=False, num_classes=0, in_chans=in_channels
        )
        config = net.pretrained_cfg
        first, head = config.get("first_conv"), config.get("classifier")
        _load_published(
            net,
            state_dict,
            in_channels,
            f"timm:{self.params.arch}",
            f"{first}.weight" if isinstance(first, str) else "",
            f"{head}." if isinstance(head, str) else "",
        )
        return net, int(net.num_features)

    def stages(self, features: nn.Module) -> dict[str, list[nn.Module]]:
        import re

        stem = features.group_matcher().get("stem") if hasattr(features, "group_matcher") else None
        if not isinstance(stem, str):
            return {"stem": []}
        return {"stem": [m for name, m in features.named_children() if re.match(stem, name)]}


class SmallCNN(_Stages, Backbone):
    """Four convolution blocks, 2D or 3D, 100 k parameters: for quick runs and tests."""

    name = "small-cnn"
    spatial_dims = frozenset({2, 3})
    stage_names = ("stem", "stage1", "stage2", "stage3")

    def build(
        self,
        in_channels: int,
        spatial_dims: int,
        state_dict: Mapping[str, Tensor] | None = None,
    ) -> tuple[nn.Module, int]:
        from torch import nn

        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        widths = (in_channels, 16, 32, 64, 128)
        blocks = OrderedDict()
        for name, (c_in, c_out) in zip(self.stage_names, itertools.pairwise(widths), strict=True):
            blocks[name] = nn.Sequential(
                conv(c_in, c_out, 3, padding=1, bias=False),
                norm(c_out),
                nn.ReLU(inplace=True),
                pool(2, ceil_mode=True) if name != "stage3" else nn.Identity(),
            )
        blocks["pool"] = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        blocks["flatten"] = nn.Flatten()
        features = nn.Sequential(blocks)
        if state_dict is not None:
            from medadapt.engine import load_matching

            load_matching(features, state_dict, f"the backbone {self.name!r}")
        return features, widths[-1]


@hookimpl
def medadapt_backbones() -> Sequence[type[Backbone]]:
    return [ResNet18, ResNet50, DenseNet121, ResNet18Volume, SmallCNN, Timm]
