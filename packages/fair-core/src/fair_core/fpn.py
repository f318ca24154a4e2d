"""Semantic FPN: a feature pyramid over a torchvision ResNet or ConvNeXt, decoded by FPNHead.

Reproduces mmsegmentation's ``configs/_base_/models/fpn_r50.py`` (``configs/sem_fpn``), with
``deep_stem: true`` for its ResNetV1c backbone; ConvNeXt backbones give their four stage outputs
as mmpretrain's ConvNeXt with ``out_indices=(0, 1, 2, 3)`` and ``gap_before_final_norm=False``
(as mmseg's ConvNeXt configs): each stage followed by its own LayerNorm over channels.

* neck: :class:`FPNNeck`, mmseg's ``FPN`` with ``num_outs=4`` (Lin et al., "Feature Pyramid
  Networks for Object Detection", CVPR 2017): 1x1 lateral convs, a nearest-neighbour top-down
  pathway, a 3x3 conv per level; maps at strides 4, 8, 16 and 32.
* head: :class:`FPNHead`, mmseg's ``FPNHead``, the semantic branch of Panoptic FPN (Kirillov et
  al., "Panoptic Feature Pyramid Networks", CVPR 2019): per level ``max(1, log2(stride / 4))``
  conv-BN-ReLU blocks, each with a 2x bilinear upsample above stride 4, summed at stride 4,
  then dropout and a 1x1 classifier: logits at stride 4.

Initialisation follows mmseg's: Xavier-uniform neck convs, Kaiming (fan-out) head convs,
``N(0, 0.01)`` classifier.

ImageNet weights (``pretrained``) come from a local .safetensors file in torchvision's key
layout (timm's for ConvNeXt is converted) or, with ``true``, from the local Hugging Face cache:
``timm/<arch>.tv_in1k`` for the ResNets; with the deep stem ``timm/resnet50c.gluon_in1k`` or
``timm/resnet101c.gluon_in1k`` (Gluon's ResNet-V1c, timm's "ResNet-C" layout ``conv1.0``,
``conv1.1``, ``conv1.3``, ``conv1.4``, ``conv1.6``, ``bn1``; mmseg itself starts from
open-mmlab's own V1c weights, the same architecture); ``timm/convnext_tiny.fb_in1k`` and
``timm/convnext_small.fb_in1k`` for ConvNeXt. The classifier is dropped; the final LayerNorm
initialises the last stage's norm, as mmseg loading mmpretrain's ``norm3``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import FairError
from .models import ModelBuilder, Segmenter, pretrained_weights

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "convnext_tiny", "convnext_small"]
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")
_TIMM_BLOCK = {"conv_dw": 0, "norm": 2, "mlp.fc1": 3, "mlp.fc2": 5}  # timm ConvNeXt block -> torchvision CNBlock.block


class FPNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: Backbone = Field("resnet50", description="torchvision backbone: resnet18/34/50/101, convnext_tiny or convnext_small")
    deep_stem: bool = Field(False, description="ResNets only: mmseg's ResNetV1c stem (three 3x3 convs, 32-32-64) instead of the 7x7 conv")
    pretrained: bool | Path = Field(
        False,
        description="true: ImageNet backbone weights from the local Hugging Face cache (timm/<arch>.tv_in1k, "
        "timm/resnet50c.gluon_in1k or timm/resnet101c.gluon_in1k with deep_stem, timm/<arch>.fb_in1k for ConvNeXt); "
        "a path: a local .safetensors file (torchvision's keys, or timm's for ConvNeXt); false: random initialisation",
    )
    neck_channels: int = Field(256, ge=1, le=4096, description="channels of the FPN neck's output maps")
    head_channels: int = Field(128, ge=1, le=4096, description="channels of the FPN head's scale heads")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier, as mmseg's decode heads")

    @model_validator(mode="after")
    def _deep_stem_is_a_resnet_stem(self) -> FPNParams:
        if self.deep_stem and not self.backbone.startswith("resnet"):
            raise ValueError(f"deep_stem is a ResNet stem; {self.backbone} has none")
        return self


# --------------------------------------------------------------------------- backbones
class _ResNetFeatures(nn.Module):
    """A torchvision ResNet without its classifier (same parameter names): layer1..4's outputs."""

    def __init__(self, arch: str, deep_stem: bool):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if deep_stem:  # timm's stem_type="deep" layout; its last BN and ReLU are net.bn1 and net.relu
            net.conv1 = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                      nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                      nn.Conv2d(32, 64, 3, 1, 1, bias=False))
            for conv in net.conv1[::3]:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.widths = [net.fc.in_features // 2 ** (3 - i) for i in range(4)]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps


class _ConvNeXtFeatures(nn.Module):
    """torchvision ConvNeXt ``features`` and a LayerNorm after each of the four stages."""

    def __init__(self, arch: str):
        super().__init__()
        import torchvision
        from torchvision.models.convnext import LayerNorm2d

        net = getattr(torchvision.models, arch)(weights=None)
        self.features = net.features  # stem, stage 0, downsample, stage 1, ..., stage 3
        self.widths = [net.classifier[-1].in_features // 2 ** (3 - i) for i in range(4)]
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in self.widths)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.features[0](images)
        maps = []
        for i, norm in enumerate(self.norms):
            if i:
                x = self.features[2 * i](x)
            x = self.features[2 * i + 1](x)
            maps.append(norm(x))
        return maps


# --------------------------------------------------------------------------- neck and head
class FPNNeck(nn.Module):
    """mmseg's ``FPN`` (``num_outs`` = the number of input maps): maps of ``channels`` at the inputs' strides."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        for conv in (*self.lateral_convs, *self.fpn_convs):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, maps, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]


def _conv_module(cin: int, cout: int) -> nn.Sequential:
    """mmcv's ``ConvModule`` with BN: 3x3 conv (no bias, Kaiming fan-out), BN, ReLU."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FPNHead(nn.Module):
    """mmseg's ``FPNHead``: per level ``max(1, log2(stride / strides[0]))`` conv modules, each
    followed by a 2x bilinear upsample except at the first level; summed, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, dropout: float,
                 strides: tuple[int, ...] = (4, 8, 16, 32)):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            blocks: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride / strides[0])))):
                blocks.append(_conv_module(in_channels if k == 0 else channels, channels))
                if stride != strides[0]:
                    blocks.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*blocks))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, maps: list[Tensor]) -> Tensor:
        output = self.scale_heads[0](maps[0])
        for head, x in zip(self.scale_heads[1:], maps[1:], strict=True):
            output = output + F.interpolate(head(x), size=output.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(output))


class _Encoder(nn.Module):
    """Backbone then neck: images ``(N, 3, H, W)`` -> four maps ``(N, C, H / s, W / s)``, s = 4, 8, 16, 32."""

    def __init__(self, backbone: nn.Module, neck: FPNNeck):
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.neck(self.backbone(images))


# --------------------------------------------------------------------------- pretrained weights
def _from_timm_convnext(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ConvNeXt keys -> torchvision's (unknown keys kept, to be reported as unexpected)."""
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"stem\.([01])\.(\w+)", key):
            key = f"features.0.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"stages\.(\d)\.downsample\.([01])\.(\w+)", key):
            key = f"features.{2 * int(m[1])}.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.gamma", key):
            key, value = f"features.{2 * int(m[1]) + 1}.{m[2]}.layer_scale", value.reshape(-1, 1, 1)
        elif (m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.([\w.]+)\.(weight|bias)", key)) and m[3] in _TIMM_BLOCK:
            key = f"features.{2 * int(m[1]) + 1}.{m[2]}.block.{_TIMM_BLOCK[m[3]]}.{m[4]}"
        elif key.startswith("head.norm."):
            key = "classifier.0." + key.removeprefix("head.norm.")
        out[key] = value
    return out


class FPN(ModelBuilder):
    """Semantic FPN (mmseg ``fpn_r50``): torchvision ResNet or ConvNeXt, FPN neck, FPN head."""

    Params = FPNParams
    description = "Semantic FPN (mmseg fpn_r50) over a torchvision ResNet or ConvNeXt"
    tasks = ("segmentation",)

    def build(self, num_classes: int) -> Segmenter:
        p = self.params
        state = self._pretrained_state() if p.pretrained else None
        if p.backbone.startswith("resnet"):
            backbone: _ResNetFeatures | _ConvNeXtFeatures = _ResNetFeatures(p.backbone, p.deep_stem)
        else:
            backbone = _ConvNeXtFeatures(p.backbone)
        if state is not None:
            self._load(backbone, state)
        encoder = _Encoder(backbone, FPNNeck(backbone.widths, p.neck_channels))
        return Segmenter(encoder, FPNHead(p.neck_channels, p.head_channels, num_classes, p.dropout), num_classes)

    def _load(self, backbone: nn.Module, state: dict[str, Tensor]) -> None:
        if "stem.0.weight" in state:
            state = _from_timm_convnext(state)
        if "classifier.0.weight" in state:  # ConvNeXt's final LayerNorm: mmpretrain's norm3
            state["norms.3.weight"], state["norms.3.bias"] = state["classifier.0.weight"], state["classifier.0.bias"]
        state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)}
        own = backbone.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and not k.startswith("norms.")]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            found = ", ".join(f"{what} {keys[:3]}" for what, keys in
                              (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if keys)
            stem = " with the deep stem" if self.params.deep_stem else ""
            raise FairError(f"model.params.pretrained: weights do not fit {self.params.backbone}{stem}; {found}")
        backbone.load_state_dict(state, strict=False)

    def _pretrained_state(self) -> dict[str, Tensor]:
        arch = self.params.backbone
        if isinstance(self.params.pretrained, Path):
            return pretrained_weights(self.params.pretrained, "")
        if self.params.deep_stem and arch not in ("resnet50", "resnet101"):
            raise FairError(f"model.params.pretrained: no ImageNet weights of {arch} with the deep stem on the Hub "
                            f"(timm has resnet50c and resnet101c); give a local .safetensors path")
        repo_id = (f"timm/{arch}c.gluon_in1k" if self.params.deep_stem else
                   f"timm/{arch}.fb_in1k" if arch.startswith("convnext") else f"timm/{arch}.tv_in1k")
        return pretrained_weights(True, repo_id)
