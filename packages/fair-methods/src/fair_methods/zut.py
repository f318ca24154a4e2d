"""ZUT: fair training with zero inputs (Pan, Zhu and Zeng, "Fair Training with Zero Inputs",
AAAI 2025; official code: asd123pwj/ZUT on mmsegmentation).

An all-zero input carries no class information, so a fair model should score every class alike
for it. With every training batch ZUT also feeds the zero image ``0`` (zero *after* mean/std
normalisation: the dataset's mean colour in pixel space) and penalises the spread of the class
scores the model gives it, the zero uniformity loss (ZUL):

    L = L_base(real batch) + lambda * ZUL

* classification: ``ZUL = std_k f(0)_k``, the unbiased standard deviation over the ``C`` class
  logits of the zero image (the paper's MMPretrain variant; its code is not released). A head
  with several ``C``-way blocks (``base: di``) gives one std per block, averaged.
* segmentation: with ``z = g(0)`` the logits ``(K, h, w)`` of the zero image resized to the label
  size, ``ZUL = std_k mean_{h, w} z_k`` (unbiased std over the ``K`` classes of the spatial mean).

As the official code: the zero image is concatenated in front of the batch and the backbone (and
neck) run once on the ``B + 1`` images, so their BatchNorm statistics include it; the segmentation
decode head runs on the zero image's features in a call of its own, and only its ZUL is kept (its
cross-entropy is discarded). ``lambda`` is ``weight``: 1.0 by default (VAN, R50, PoolFormer in
the paper), 0.1 for ConvNeXt-T.

One deliberate difference, ``zero_head_bn`` (default ``frozen``). In the official code the head's
separate call on the zero features, in training mode, normalises them with their own statistics
*and updates the head's BatchNorm running statistics*: every step moves them once towards the
real batch and once towards one constant image, and evaluation normalises with that mixture.
``frozen`` keeps the call's own statistics but leaves the running statistics to the real
batches; ``train`` is the official behaviour; ``eval`` normalises the zero features with the
running statistics, as the deployed model would. On ``examples/zut.json`` against
``examples/segmentation.json`` (ERM, same recipe), train seeds 0/1/2, mean +- std:

    ==========  ============  ============  ============
    variant     aAcc          mAcc          mIoU
    ==========  ============  ============  ============
    ERM         0.900 +-.003  0.588 +-.010  0.445 +-.032
    frozen      0.902 +-.003  0.597 +-.013  0.447 +-.012
    train       0.854 +-.026  0.464 +-.041  0.315 +-.074
    eval        0.888 +-.018  0.556 +-.060  0.397 +-.071
    ==========  ============  ============  ============

``frozen`` raised mAcc on every seed (+0.006 to +0.014); the official ``train`` lost 9-17 points
of mAcc on every seed, through the polluted running statistics alone. ``eval`` does make the
deployed model's zero-image scores uniform (std 0.002 against ERM's 2.5-3.3) but costs mAcc on
two seeds of three: what helps is the regularisation of the training-mode path, not a uniform
response of the deployed model (with ``frozen`` its std was 2.7/1.5/2.5 against ERM's
2.5/2.9/3.3). Classification has no head BatchNorm and none of this applies. With ``train`` or
``frozen`` the head's BatchNorm needs more than one value per channel in the zero image's
feature maps: an FPN needs inputs of 64 px or more (its stride-32 level).

ZUT is a regulariser on top of another method's loss: ``base`` names it (``erm`` by default, or
e.g. ``uw``, ``us``, ``di`` with its own ``base_params``). ZUT delegates every hook to the base
method (its data, model, optimisers, inference) and adds the ZUL to its loss. It does so with two
forward hooks on the model that act in training mode only: one puts the zero image in front of
every batch the model sees, the other takes its output off again, so the base method's loss sees
the real batch exactly as without ZUT and evaluation is untouched. Base methods with their own
training step (``adv``, ``bcbb``, ``bm``, ``flac``: several forwards, several optimisers) are
refused, since which of their losses the ZUL should join is not defined by the paper.

Deviation from the official code, which zeroes the ZUL when the zero batch holds more than one
image: here there is always exactly one zero image per forward, so that case cannot arise.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from fair_core import FairError, Method
from fair_core.models import ApartBatchNorm, Segmenter
from fair_core.tasks.segmentation import resize_logits


def classification_zul(zero_logits: Tensor, num_classes: int) -> Tensor:
    """ZUL of the zero image's logits ``(1, M)``: the unbiased std over each ``num_classes``-way
    block of logits (``M = num_classes`` for a plain head), averaged over the blocks."""
    return zero_logits.reshape(-1, num_classes).std(dim=1, unbiased=True).mean()


def segmentation_zul(zero_logits: Tensor, label_size: tuple[int, int]) -> Tensor:
    """ZUL of the zero image's logits ``(1, K, h, w)``: resized to ``label_size``, averaged over
    pixels, then the unbiased std over the ``K`` classes."""
    return resize_logits(zero_logits, label_size).mean(dim=(-2, -1)).std(dim=1, unbiased=True).mean()


def drop_first(value: Any, k: int = 1) -> Any:
    """``value`` without its first ``k`` samples (tensors, and lists or tuples of them)."""
    if isinstance(value, Tensor):
        return value[k:]
    if isinstance(value, (list, tuple)):
        return type(value)(drop_first(v, k) for v in value)
    return value


def first_logits(output: Any) -> Tensor:
    """The logits of the zero image: row 0 of the output (of its first element when a tuple)."""
    while isinstance(output, (list, tuple)):
        output = output[0]
    return output[:1]


class ZeroInput:
    """Forward hooks that, in training mode, put the zero image in front of every batch a model
    sees and take its logits off the output again (kept in :attr:`zero_logits` for the loss)."""

    def __init__(self, model: nn.Module, decode_apart: bool, head_bn: ApartBatchNorm = "train"):
        self.decode_apart, self.head_bn, self.zero_logits = decode_apart, head_bn, []
        model.register_forward_pre_hook(self._prepend, with_kwargs=True)
        model.register_forward_hook(self._split)

    def _prepend(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not module.training:
            return None
        images, *rest = args
        zero = images.new_zeros(1, *images.shape[1:])
        if self.decode_apart:  # segmentation: the decode head sees the zero features in a call of its own
            kwargs = {**kwargs, "decode_apart": 1, "apart_bn": self.head_bn}
        return (torch.cat([zero, images]), *rest), kwargs

    def _split(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not module.training:
            return None
        self.zero_logits.append(first_logits(output))
        return drop_first(output)

    def take(self) -> list[Tensor]:
        """The zero image's logits of every forward since the last call."""
        taken, self.zero_logits = self.zero_logits, []
        return taken


class ZUTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="lambda, the weight of the zero uniformity loss "
                          "(paper: 1.0; 0.1 for ConvNeXt-T)")
    base: str = Field("erm", description="the method whose loss ZUT regularises (a registered method "
                      "with the default training step: erm, us, os, uw, di, ...)")
    base_params: dict[str, Any] = Field(default_factory=dict, description="the base method's own parameters")
    zero_head_bn: ApartBatchNorm = Field("frozen", description="segmentation: how the head's BatchNorm treats the "
                                         "zero image's separate pass: train (its own statistics, running ones "
                                         "updated: the official code), frozen (its own statistics, running ones "
                                         "untouched) or eval (the running statistics, as at inference)")

    @model_validator(mode="after")
    def _known_base(self) -> ZUTParams:
        self.base_method()  # raises a one-line FairError naming method.params.base(_params)
        return self

    def base_method(self) -> tuple[type[Method], BaseModel]:
        """The base method's class and its validated parameters."""
        from fair_core.plugins import get_registry
        from fair_core.spec import validate_params

        method = get_registry().get("methods", self.base, "method.params.base").obj
        if issubclass(method, ZUT):
            raise FairError("method.params.base: zut cannot regularise itself; name another method, e.g. erm or uw")
        if method.training_step is not Method.training_step:
            raise FairError(f"method.params.base: {self.base} has its own training step (several forwards or "
                            f"optimisers); ZUT adds its loss to methods that only change the loss, e.g. erm, uw, us, di")
        return method, validate_params(method.Params, self.base_params, "method.params.base_params")


class ZUT(Method):
    """The base method's loss plus ``weight`` x the spread of the class scores of the zero image."""

    Params = ZUTParams
    stage = "in-processing"
    tasks = ("classification", "segmentation")
    description = "zero-input uniformity loss: equal class scores for an all-zero image (on top of a base method)"
    paper = "Pan, Zhu and Zeng, Fair Training with Zero Inputs, AAAI 2025"

    def __init__(self, params: ZUTParams, info, task=None):
        super().__init__(params, info, task)
        base_cls, base_params = params.base_method()
        if not base_cls.supports(self.task.name):
            raise FairError(f"method.params.base: {params.base} supports the {', '.join(base_cls.tasks)} task, "
                            f"not {self.task.name}")
        self.base = base_cls(base_params, info, self.task)
        self.zero: ZeroInput | None = None

    # ------------------------------------------------------------------ the base method's hooks
    def prepare_data(self, train_set, generator):
        return self.base.prepare_data(train_set, generator)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        model = self.base.build_model(backbone)
        segmentation = self.task.name == "segmentation"
        if segmentation and not isinstance(model, Segmenter):
            raise FairError("method.name: zut needs a segmentation model built as fair_core.models.Segmenter "
                            "(an encoder and a decode head it can call apart)")
        self.zero = ZeroInput(model, decode_apart=segmentation, head_bn=self.params.zero_head_bn)
        return model

    def configure_optimizers(self, model, make_optimizer):
        return self.base.configure_optimizers(model, make_optimizer)

    def setup(self, model, trainer) -> None:
        self.base.setup(model, trainer)

    def on_epoch_start(self, model, trainer) -> None:
        self.base.on_epoch_start(model, trainer)

    def on_epoch_end(self, model, trainer) -> None:
        self.base.on_epoch_end(model, trainer)

    def post_train(self, model, trainer) -> None:
        self.base.post_train(model, trainer)

    def predict(self, model, images: Tensor) -> Tensor:
        return self.base.predict(model, images)

    def embed(self, model, images: Tensor) -> Tensor:
        return self.base.embed(model, images)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    # ------------------------------------------------------------------ the loss
    def zul(self, batch: dict[str, Tensor]) -> Tensor:
        """The ZUL of the zero images of the forwards since the last call (their mean)."""
        zero_logits = self.zero.take()
        if not zero_logits:
            raise FairError(f"zut: the base method {self.params.base} ran no forward of the model in its loss")
        if self.task.name == "segmentation":
            size = tuple(batch["mask"].shape[-2:])
            values = [segmentation_zul(z.float(), size) for z in zero_logits]
        else:
            values = [classification_zul(z.float(), self.info.num_classes) for z in zero_logits]
        return torch.stack(values).mean()

    def compute_loss(self, model, batch) -> Tensor:
        return self._losses(model, batch)[0]

    def _losses(self, model, batch) -> tuple[Tensor, Tensor, Tensor]:
        base_loss = self.base.compute_loss(model, batch)
        zul = self.zul(batch)
        return base_loss + self.params.weight * zul, base_loss, zul

    def training_step(self, model, batch, trainer) -> dict[str, Any]:
        loss, base_loss, zul = self._losses(model, batch)
        trainer.step(loss)
        return {"loss": loss.detach(), "base_loss": base_loss.detach(), "zul": zul.detach()}
