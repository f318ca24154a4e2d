"""IResNet face backbones (``iresnet18/34/50/100``), the "improved" ResNets of insightface's
ArcFace models (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019; Duta et al., "Improved Residual Networks", 2020; layout of insightface's
``recognition/arcface_torch/backbones/iresnet.py``).

Architecture, for a ``S x S`` input (``S = input_size``, 112 as insightface) and ``w = width``
(64 as insightface):

* stem: conv3x3(3 -> w, stride 1) -> BN -> PReLU;
* four stages of ``layers`` blocks with ``w, 2w, 4w, 8w`` channels, each stage halving the map
  (its first block has stride 2): 18 ``[2, 2, 2, 2]``, 34 ``[3, 4, 6, 3]``, 50 ``[3, 4, 14, 3]``,
  100 ``[3, 13, 30, 3]``;
* block: ``y = BN(conv3x3_s(PReLU(BN(conv3x3(BN(x)))))) + shortcut(x)`` where only the second
  conv has the stride ``s``, and ``shortcut`` is conv1x1(stride s) -> BN when the shape changes
  (the first block of every stage), the identity otherwise; no activation after the sum;
* embedding head (:class:`fair_face.models.EmbeddingHead`): BN2d -> dropout -> flatten ->
  Linear(``8w * (S/16)^2`` -> ``embedding_dim``) -> BN1d whose affine weight is frozen at 1
  (insightface's ``features`` layer): at 112 px the Linear is 25088 -> 512.

Initialisation as insightface: every conv ``N(0, 0.1)``, BN2d weight 1 and bias 0, PReLU slopes
0.25, the Linear PyTorch's default.

**Encoder convention** (relied on by the ``mixfairface`` method): the builders return
``fair_core.Classifier(encoder, embedding_dim, num_classes)`` where ``encoder`` is an
``nn.Sequential`` of two named modules, ``body`` (:class:`IResNetBody`, stem and stages) and
``head`` (:class:`~fair_face.models.EmbeddingHead`). The encoder's last module is the embedding
head and ``encoder[:-1]`` maps images to the stage-4 feature map ``(N, 8w, S/16, S/16)``.

**Pretrained weights** are safetensors files whose keys are this encoder's state-dict keys:
insightface's names under ``body.`` (``body.conv1.weight``, ``body.bn1.*``, ``body.prelu.weight``,
``body.layer1.0.bn1.*``, ``body.layer1.0.downsample.0.weight`` ...) and ``head.``
(``head.bn2.*``, ``head.fc.*``, ``head.features.*``). ``fair face convert-weights`` (see
:mod:`fair_face.weights`) writes them from an insightface ``backbone.pth``. Nothing is
downloaded when a model is built: a Hub repo id is read from the local Hugging Face cache.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from fair_core import Classifier, FairError, ModelBuilder
from fair_core.models import pretrained_weights

from .models import EmbeddingHead

IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
STAGE_STRIDE = 16  # four stride-2 stages
CONV_INIT_STD = 0.1  # insightface: nn.init.normal_(conv.weight, 0, 0.1)
_PICKLED_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IResNetBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut (insightface's
    ``IBasicBlock``, with its module names)."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNetBody(nn.Module):
    """Stem (conv3x3 -> BN -> PReLU) and the four stages: images ``(N, 3, S, S)`` to the stage-4
    map ``(N, 8 width, S/16, S/16)``."""

    def __init__(self, layers: tuple[int, int, int, int], width: int = 64):
        super().__init__()
        self.conv1 = _conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.prelu = nn.PReLU(width)
        in_channels = width
        for index, blocks in enumerate(layers):
            channels = width * 2**index
            stage = [IResNetBlock(in_channels, channels, 2)] + [IResNetBlock(channels, channels, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            in_channels = channels
        self.out_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(images)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def iresnet_encoder(layers: tuple[int, int, int, int], width: int = 64, input_size: int = 112,
                    embedding_dim: int = 512, dropout: float = 0.0) -> nn.Sequential:
    """``Sequential(body=IResNetBody, head=EmbeddingHead)``, initialised as insightface."""
    body = IResNetBody(layers, width)
    head = EmbeddingHead(body.out_channels, input_size // STAGE_STRIDE, embedding_dim, dropout)
    encoder = nn.Sequential(OrderedDict(body=body, head=head))
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, CONV_INIT_STD)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return encoder


class IResNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pretrained: bool | str = Field(
        False,
        description="false: insightface's random initialisation; a local .safetensors file (this encoder's keys, e.g. "
        "written by `fair face convert-weights`); or a Hugging Face repo id whose model.safetensors is read from the "
        "local cache (nothing is downloaded)",
    )
    embedding_dim: int = Field(512, ge=2, le=4096, description="size of the face embedding")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the embedding Linear (insightface: 0)")
    input_size: int = Field(112, ge=16, le=1024, multiple_of=STAGE_STRIDE,
                            description="square input size in pixels (112 as insightface); the stage-4 map is input_size/16")
    width: int = Field(64, ge=2, le=512, description="channels of the stem and stage 1 (64 as insightface); stages use 1, 2, 4, 8 times it")

    @field_validator("pretrained")
    @classmethod
    def _weights_source(cls, value: bool | str) -> bool | str:
        if value is True:
            raise ValueError("no default weights for IResNets: give a local .safetensors file or a Hugging Face repo id")
        if isinstance(value, str) and value.endswith(_PICKLED_SUFFIXES):
            raise ValueError("a pickled weights file is never loaded: convert an insightface .pth once with "
                             "`fair face convert-weights` and give the .safetensors file")
        if isinstance(value, str) and not value.endswith(".safetensors") and not _REPO_ID.fullmatch(value):
            raise ValueError("neither a .safetensors file nor a Hugging Face repo id (owner/name)")
        return value


class _IResNet(ModelBuilder):
    Params = IResNetParams
    arch: ClassVar[str]
    tasks = ("verification",)

    def build(self, num_classes: int) -> Classifier:
        p = self.params
        encoder = iresnet_encoder(IRESNET_LAYERS[self.arch], p.width, p.input_size, p.embedding_dim, p.dropout)
        if p.pretrained:
            load_pretrained_encoder(encoder, p.pretrained, self._describe())
        return Classifier(encoder, p.embedding_dim, num_classes)

    def _describe(self) -> str:
        p = self.params
        return f"{self.arch} (width {p.width}, input_size {p.input_size}, embedding_dim {p.embedding_dim})"


def load_pretrained_encoder(encoder: nn.Module, source: str, what: str) -> None:
    """Load ``source`` (a local .safetensors path, or a Hub repo id from the local cache) into
    ``encoder``: every key must exist with its shape (a missing ``num_batches_tracked`` counter is
    allowed), else one :class:`FairError` line naming the first offending key and the file."""
    if source.endswith(".safetensors"):
        state, name = pretrained_weights(Path(source), ""), source
    else:
        state, name = pretrained_weights(True, source), f"{source}/model.safetensors"
    problem = encoder_state_problem(encoder.state_dict(), state, what)
    if problem:
        hint = ("; it has insightface's names: convert it first with `fair face convert-weights`"
                if "conv1.weight" in state or "fc.weight" in state else "")
        raise FairError(f"model.params.pretrained: {name} does not fit {problem}{hint}")
    encoder.load_state_dict(state, strict=False)


def encoder_state_problem(own: dict[str, Tensor], state: dict[str, Tensor], what: str) -> str | None:
    """What keeps ``state`` from loading into a module whose state dict is ``own``: the first
    missing key (in the module's order), else the first unexpected key, else the first shape
    mismatch, with how many more there are; ``None`` when it fits."""
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing:
        return f"{what}: missing key {missing[0]}{_more(missing, 'missing')}"
    if unexpected:
        return f"{what}: unexpected key {unexpected[0]}{_more(unexpected, 'unexpected')}"
    if wrong:
        k = wrong[0]
        return (f"{what}: {k} has shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
                f"{_more(wrong, 'with a wrong shape')}")
    return None


def _more(keys: list[str], what: str) -> str:
    return f" (and {len(keys) - 1} more {what})" if len(keys) > 1 else ""


class IResNet18(_IResNet):
    """insightface's IResNet-18: layers [2, 2, 2, 2]."""

    arch = "iresnet18"
    description = "insightface IResNet-18 face backbone, layers [2, 2, 2, 2]"


class IResNet34(_IResNet):
    """insightface's IResNet-34: layers [3, 4, 6, 3] (MixFairFace's backbone)."""

    arch = "iresnet34"
    description = "insightface IResNet-34 face backbone, layers [3, 4, 6, 3] (MixFairFace's)"


class IResNet50(_IResNet):
    """insightface's IResNet-50: layers [3, 4, 14, 3]."""

    arch = "iresnet50"
    description = "insightface IResNet-50 face backbone, layers [3, 4, 14, 3]"


class IResNet100(_IResNet):
    """insightface's IResNet-100: layers [3, 13, 30, 3]."""

    arch = "iresnet100"
    description = "insightface IResNet-100 face backbone, layers [3, 13, 30, 3]"


IRESNET_BUILDERS: dict[str, type[_IResNet]] = {b.arch: b for b in (IResNet18, IResNet34, IResNet50, IResNet100)}


def build_encoder_on_meta(arch: str, **params) -> nn.Sequential:
    """The encoder of ``arch`` on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        return iresnet_encoder(IRESNET_LAYERS[arch], **params)
