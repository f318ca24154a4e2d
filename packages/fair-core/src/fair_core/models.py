"""Backbones: the interface model plugins implement, and core's built-in models.

A classification or verification model is a :class:`Classifier`: an ``encoder`` that maps images
to a ``feature_dim`` vector (the embedding, for face verification) and a linear ``head`` (the
classes, or the training identities). Methods that need features (contrastive, adversarial,
mimicking) call :meth:`Classifier.features`; methods that need other heads add them around it.
A segmentation model is a :class:`Segmenter`: an ``encoder`` (backbone and neck) that maps images
to feature maps and a ``head`` that decodes them into per-pixel logits. A builder declares the
``tasks`` its models serve.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from .errors import FairError


class Classifier(nn.Module):
    """``encoder`` (images -> features) followed by a linear ``head`` (features -> logits)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.encoder, self.feature_dim, self.num_classes = encoder, feature_dim, num_classes
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def forward(self, images: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits, or ``(logits, features)`` (going through ``forward`` keeps DDP's gradient sync)."""
        features = self.features(images)
        logits = self.head(features)
        return (logits, features) if with_features else logits


class Segmenter(nn.Module):
    """``encoder`` (images -> feature maps) followed by a decode ``head`` (features -> logits
    ``(N, K, h, w)``, at any resolution: the segmentation task resizes them to the mask)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, num_classes: int):
        super().__init__()
        self.encoder, self.head, self.num_classes = encoder, head, num_classes

    def features(self, images: Tensor):
        return self.encoder(images)

    def forward(self, images: Tensor, with_features: bool = False, decode_apart: int = 0,
                apart_bn: ApartBatchNorm = "train"):
        """Logits (and the feature maps); with ``decode_apart = k`` the encoder runs once on every
        image but the head decodes the first ``k`` images' features in a call of its own (ZUT's
        zero image), its BatchNorm layers as ``apart_bn`` says (:func:`batchnorm_as`)."""
        features = self.features(images)
        if decode_apart:
            with batchnorm_as(self.head, apart_bn):
                first = self.head(batch_slice(features, 0, decode_apart))
            logits = torch.cat([first, self.head(batch_slice(features, decode_apart, None))])
        else:
            logits = self.head(features)
        return (logits, features) if with_features else logits


ApartBatchNorm = Literal["train", "frozen", "eval"]


@contextlib.contextmanager
def batchnorm_as(module: nn.Module, mode: ApartBatchNorm):
    """Within the block, the BatchNorm layers of ``module`` (in training mode) normalise with the
    batch statistics and update their running statistics (``train``, unchanged behaviour), with the
    batch statistics leaving the running ones unchanged (``frozen``), or with the running
    statistics (``eval``, as at inference)."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if mode == "train" or not layers:
        yield
        return
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        if mode == "eval":
            m.eval()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(layers, saved, strict=True):
            m.train()
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def batch_slice(features, start: int, stop: int | None):
    """Samples ``start:stop`` of a feature map or of a list of them."""
    if isinstance(features, Tensor):
        return features[start:stop]
    return type(features)(batch_slice(f, start, stop) for f in features)


class ModelBuilder(ABC):
    """Base class of model plugins: ``Params`` (pydantic), the ``tasks`` it serves, and :meth:`build`."""

    Params: ClassVar[type[BaseModel]]
    description: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ("classification", "verification")

    def __init__(self, params: BaseModel):
        self.params = params

    @classmethod
    def supports(cls, task: str) -> bool:
        return task in cls.tasks

    @abstractmethod
    def build(self, num_classes: int) -> nn.Module:
        """A freshly initialised (or pretrained, if asked) model with ``num_classes`` outputs
        (a :class:`Classifier`, or a :class:`Segmenter` for segmentation)."""


# --------------------------------------------------------------------------- small_cnn
class SmallCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(32, ge=4, le=512, description="channels of the first block (doubled twice)")


def small_cnn_stages(width: int) -> list[nn.Module]:
    """Three conv-BN-ReLU blocks of ``width``, ``2 width`` and ``4 width`` channels, max-pooled
    between them (stride 4 in all): the feature maps of ``small_cnn`` and its relatives."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return [*block(3, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2), *block(2 * width, 4 * width)]


class SmallCNN(ModelBuilder):
    """Three conv-BN-ReLU blocks and global average pooling: fast on CPU, for tests and demos."""

    Params = SmallCNNParams
    description = "3-block CNN for small images (tests, demos)"

    def build(self, num_classes: int) -> Classifier:
        encoder = nn.Sequential(*small_cnn_stages(self.params.width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Classifier(encoder, 4 * self.params.width, num_classes)


# --------------------------------------------------------------------------- small_encoder_decoder
def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _SmallEncoder(nn.Module):
    """Three stages at strides 1, 2 and 4; returns the three feature maps."""

    def __init__(self, width: int):
        super().__init__()
        self.stages = nn.ModuleList([_conv_block(3, width), _conv_block(width, 2 * width), _conv_block(2 * width, 4 * width)])

    def forward(self, images: Tensor) -> list[Tensor]:
        maps, x = [], images
        for i, stage in enumerate(self.stages):
            x = stage(nn.functional.max_pool2d(x, 2) if i else x)
            maps.append(x)
        return maps


class _SmallDecoder(nn.Module):
    """U-Net-style decoder: upsample, concatenate the skip connection, convolve; 1x1 classifier."""

    def __init__(self, width: int, num_classes: int, dropout: float):
        super().__init__()
        self.up = nn.ModuleList([_conv_block(6 * width, 2 * width), _conv_block(3 * width, width)])
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        x = maps[-1]
        for block, skip in zip(self.up, reversed(maps[:-1]), strict=True):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.classifier(self.dropout(x))


class SmallEncoderDecoderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(16, ge=4, le=256, description="channels of the first stage (doubled at each of the two others)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier, as mmseg's decode heads")


class SmallEncoderDecoder(ModelBuilder):
    """A small U-Net (3 stages down, 2 up with skip connections): fast on CPU, for tests and demos."""

    Params = SmallEncoderDecoderParams
    description = "small U-Net-style encoder-decoder for segmentation (tests, demos)"
    tasks = ("segmentation",)

    def build(self, num_classes: int) -> Segmenter:
        w = self.params.width
        return Segmenter(_SmallEncoder(w), _SmallDecoder(w, num_classes, self.params.dropout), num_classes)


# --------------------------------------------------------------------------- torchvision ResNets
class ResNetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pretrained: bool | Path = Field(
        False,
        description="true: ImageNet weights from the local Hugging Face cache (timm/<arch>.tv_in1k); "
        "a path: a local .safetensors file; false: random initialisation",
    )
    cifar_stem: bool = Field(False, description="3x3 stride-1 stem without max-pool (CIFAR-style, 32 px inputs)")


class _TorchvisionResNet(ModelBuilder):
    Params = ResNetParams
    arch: ClassVar[Literal["resnet18", "resnet50"]]

    def build(self, num_classes: int) -> Classifier:
        import torchvision

        net = getattr(torchvision.models, self.arch)(weights=None)
        if self.params.pretrained:
            missing = [k for k in net.load_state_dict(self._pretrained_state(), strict=False).missing_keys
                       if not k.startswith("fc.")]
            if missing:
                raise FairError(f"model.params.pretrained: weights do not fit {self.arch}; missing {missing[:3]}")
        if self.params.cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return Classifier(net, feature_dim, num_classes)

    def _pretrained_state(self) -> dict[str, Tensor]:
        state = pretrained_weights(self.params.pretrained, f"timm/{self.arch}.tv_in1k")
        return {k: v for k, v in state.items() if not k.startswith("fc.")}


def pretrained_weights(pretrained: Path | bool, repo_id: str) -> dict[str, Tensor]:
    """The weights ``model.params.pretrained`` names: a local .safetensors file, or (``true``)
    ``repo_id``'s ``model.safetensors`` in the local Hugging Face cache (nothing is downloaded);
    one-line :class:`FairError` otherwise."""
    from huggingface_hub import try_to_load_from_cache
    from safetensors.torch import load_file

    if isinstance(pretrained, Path):
        path = pretrained
        if not path.is_file():
            raise FairError(f"model.params.pretrained: no weights file at {path}")
    else:
        cached = try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=os.environ.get("HF_HUB_CACHE"))
        if not isinstance(cached, str):
            raise FairError(
                f"model.params.pretrained: {repo_id} is not in the Hugging Face cache; download it once with "
                f"`hf download {repo_id} model.safetensors` or give a local .safetensors path"
            )
        path = Path(cached)
    try:
        return load_file(str(path))
    except Exception as exc:  # corrupt or not safetensors
        raise FairError(f"model.params.pretrained: cannot read {path}: {exc}") from None


class ResNet18(_TorchvisionResNet):
    """torchvision ResNet-18 (512-d features)."""

    arch = "resnet18"
    description = "torchvision ResNet-18"


class ResNet50(_TorchvisionResNet):
    """torchvision ResNet-50 (2048-d features)."""

    arch = "resnet50"
    description = "torchvision ResNet-50"


from .fpn import FPN  # noqa: E402  (fpn.py builds on the classes above)

BUILTIN_MODELS: dict[str, type[ModelBuilder]] = {
    "small_cnn": SmallCNN, "resnet18": ResNet18, "resnet50": ResNet50, "small_encoder_decoder": SmallEncoderDecoder,
    "fpn": FPN,
}
