"""Training losses a spec can choose for its task (``train.loss``).

* ``cross_entropy`` (the default): the task's own loss, unchanged (classification: cross-entropy of
  the logits; segmentation: per-pixel cross-entropy; verification: softmax over the identities).
* ``focal``: the focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) of
  :func:`focal_loss`, with ``train.focal_alpha`` and ``train.focal_gamma``; classification only.
  VLBC (D'Inca et al., WACV 2024) trains its classifiers with it, alpha 0.25 and gamma 3.

The loss is the task's default loss: what ``erm`` (the base :class:`~fair_core.Method`) minimises,
and what a method that calls ``self.task.loss`` (or ``Method.compute_loss``) gets. A method that
computes its own cross-entropy keeps it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import FairError

if TYPE_CHECKING:
    from .spec import TrainSpec
    from .tasks import Task

__all__ = ["LOSSES", "focal_loss", "configure_task_loss"]

LOSSES = ("cross_entropy", "focal")


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """The softmax focal loss of class scores ``logits`` ``(N, C, *)`` on class indices ``targets``
    ``(N, *)`` (Lin et al., ICCV 2017, eq. 5)::

        FL(p_t) = -alpha (1 - p_t)^gamma log(p_t),   p_t = softmax(logits)[target]

    averaged over the samples (``reduction="mean"``; ``"sum"``, or ``"none"`` for one value per
    sample). ``gamma = 0`` and ``alpha = 1`` is the cross-entropy.

    The form: the paper states the loss for a binary, sigmoid output, where ``alpha_t`` is
    ``alpha`` for the positive class and ``1 - alpha`` for the negative one (torchvision's
    ``sigmoid_focal_loss``, one independent sigmoid per class, RetinaNet's detector head). Our
    classifiers have a softmax head trained with cross-entropy and predict its argmax, and a
    per-class ``alpha_t`` has no multi-class meaning (it would re-weight class 1 against class 0 of
    a binary target only), so this is the softmax form with ``alpha`` a constant factor for every
    class (the paper notes the multi-class extension is direct; kornia's ``focal_loss``). It is the form
    VLBC's code trains its 2-way softmax heads with (``utils/losses.py``, ``focal_loss_ls`` with
    ``ls=0``, from FALCO / kornia), less its ``1e-8`` added to the softmax and ``1e-6`` added to
    every entry of the one-hot target: ``log p_t`` here comes from ``log_softmax``, and ``1 - p_t``
    from ``-expm1(log p_t)``, accurate when ``p_t`` is close to 1.

    A sample classified with ``p_t == 1`` exactly (float precision) contributes 0 and no gradient,
    the limit of the formula (for ``0 < gamma < 1`` the derivative of ``(1 - p_t)^gamma`` alone is
    infinite there; the product's limit is 0).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
    log_pt = F.log_softmax(logits, dim=1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if gamma == 0:
        modulation = torch.ones_like(log_pt)
    else:
        one_minus = -torch.expm1(log_pt)  # 1 - p_t
        positive = one_minus > 0
        # where p_t == 1 the factor is 0 and its gradient too (a plain pow would give inf * 0 = nan)
        modulation = torch.where(positive, torch.where(positive, one_minus, 1.0) ** gamma, 0.0)
    losses = -alpha * modulation * log_pt
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def configure_task_loss(task: Task, train: TrainSpec) -> None:
    """Give ``task`` the loss ``train.loss`` asks for, when a spec is resolved for training.

    ``cross_entropy`` leaves every task as it is. Another loss needs a task that takes it (a
    ``configure_loss(train)`` method: classification); any other task refuses it with one
    :class:`FairError` line naming the field."""
    if train.loss == "cross_entropy":
        return
    configure = getattr(task, "configure_loss", None)
    if configure is None:
        raise FairError(f"train.loss: {train.loss} applies to the classification task, not {task.name} "
                        f"(which trains with its own loss); use cross_entropy")
    configure(train)
