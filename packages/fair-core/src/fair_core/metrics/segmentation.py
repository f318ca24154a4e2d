"""Semantic-segmentation metrics from one summable pixel confusion matrix.

The state is ``conf[y, p]``: the number of labelled pixels of class ``y`` predicted as ``p``
(shape ``(K, K)``), or one matrix per protected group of the images, ``conf[g, y, p]``
(``(G, K, K)``). Pixels whose label is the ignore index are not counted. Matrices of several
batches or processes are simply added, so metrics are exact across processes, as mmsegmentation
computes them from summed areas. For class ``k``:

* ``intersect_k = conf[k, k]``, ``label_k = sum_p conf[k, p]``, ``pred_k = sum_y conf[y, k]``
* ``Acc_k = intersect_k / label_k`` (nan when the class has no labelled pixel)
* ``IoU_k = intersect_k / (label_k + pred_k - intersect_k)`` (nan when the union is empty)
* ``aAcc = sum_k intersect_k / sum_k label_k``, ``mAcc = nanmean_k Acc_k``, ``mIoU = nanmean_k IoU_k``

Every function below takes ``(..., K, K)`` and reduces the last two dimensions, so a per-group
state ``(G, K, K)`` gives per-group values ``(G,)``. Fairness across classes is the spread of the
per-class values (population std, ddof 0: all classes are measured, not sampled) and the worst
class; fairness across groups is the gap (max - min) and the worst group, defined when at least
two groups have labelled pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .classification import _nanmin, _ratio, _spread
from .metric import Metric

__all__ = [
    "DEFAULT_IGNORE_INDEX",
    "image_confusion",
    "segmentation_confusion",
    "pixel_accuracy",
    "class_accuracy",
    "class_iou",
    "mean_accuracy",
    "mean_iou",
    "class_spread",
    "SEGMENTATION_METRICS",
]

DEFAULT_IGNORE_INDEX = 255


def _hard_labels(preds: Tensor) -> Tensor:
    """``(N, H, W)`` labels from labels or from class scores ``(N, K, H, W)``."""
    return preds.argmax(dim=1) if preds.ndim == 4 else preds


def image_confusion(preds: Tensor, labels: Tensor, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> Tensor:
    """One confusion matrix per image, ``(N, K, K)``: ``conf[n, y, p]`` pixels of image ``n``
    labelled ``y`` and predicted ``p``. ``preds``: labels ``(N, H, W)`` or scores ``(N, K, H, W)``;
    ``labels``: ``(N, H, W)``; pixels labelled ``ignore_index`` are skipped. One ``bincount``."""
    preds = _hard_labels(preds).long()
    labels = labels.long()
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} must have the same shape")
    n = labels.shape[0]
    valid = labels != ignore_index
    if bool(((labels < 0) | (labels >= num_classes))[valid].any()):
        raise ValueError(f"labels must lie in [0, {num_classes}) or equal the ignore index {ignore_index}")
    image = torch.arange(n, device=labels.device).view(n, *([1] * (labels.ndim - 1))).expand_as(labels)
    cell = (image[valid] * num_classes + labels[valid]) * num_classes + preds[valid]
    counts = torch.bincount(cell, minlength=n * num_classes * num_classes)
    return counts.reshape(n, num_classes, num_classes)


def segmentation_confusion(
    preds: Tensor, labels: Tensor, num_classes: int, groups: Tensor | None = None, num_groups: int = 1,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> Tensor:
    """Pixel confusion per group ``(G, K, K)``; ``groups`` gives each image's group (all in
    group 0 when omitted)."""
    per_image = image_confusion(preds, labels, num_classes, ignore_index)
    if groups is None:
        groups = torch.zeros(per_image.shape[0], dtype=torch.long, device=per_image.device)
    out = torch.zeros(num_groups, num_classes, num_classes, dtype=per_image.dtype, device=per_image.device)
    return out.index_add_(0, groups.long().reshape(-1), per_image)


def _areas(conf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(intersect, label, pred) areas per class, each ``(..., K)``."""
    conf = conf.double()
    return torch.diagonal(conf, dim1=-2, dim2=-1), conf.sum(-1), conf.sum(-2)


def pixel_accuracy(conf: Tensor) -> Tensor:
    """aAcc: correctly labelled pixels over labelled pixels."""
    intersect, label, _ = _areas(conf)
    return _ratio(intersect.sum(-1), label.sum(-1))


def class_accuracy(conf: Tensor) -> Tensor:
    """Per-class accuracy (recall) ``(..., K)``; nan for a class without labelled pixels."""
    intersect, label, _ = _areas(conf)
    return _ratio(intersect, label)


def class_iou(conf: Tensor) -> Tensor:
    """Per-class IoU ``(..., K)``; nan when neither labelled nor predicted."""
    intersect, label, pred = _areas(conf)
    return _ratio(intersect, label + pred - intersect)


def mean_accuracy(conf: Tensor) -> Tensor:
    """mAcc: mean of the defined per-class accuracies."""
    return class_accuracy(conf).nanmean(-1)


def mean_iou(conf: Tensor) -> Tensor:
    """mIoU: mean of the defined per-class IoUs."""
    return class_iou(conf).nanmean(-1)


def class_spread(per_class: Tensor) -> Tensor:
    """Population std (ddof 0) of the defined per-class values, over the last dimension."""
    defined = ~per_class.isnan()
    count = defined.sum(-1).clamp_min(1)
    values = per_class.nan_to_num(0.0)
    mean = values.sum(-1) / count
    var = ((values - mean.unsqueeze(-1)) ** 2 * defined).sum(-1) / count
    return torch.where(defined.any(-1), var.sqrt(), torch.full_like(mean, float("nan")))


def _across_groups(per_group: Tensor, reduce) -> Tensor:
    """``reduce`` over groups, nan unless at least two groups are defined."""
    enough = (~per_group.isnan()).sum(-1) >= 2
    return torch.where(enough, reduce(per_group), torch.full_like(per_group[..., 0], float("nan")))


def _overall(fn):
    return lambda conf: fn(conf.sum(-3))


SEGMENTATION_METRICS: tuple[Metric, ...] = tuple(
    Metric(name, compute, section, higher, description, task="segmentation")
    for name, compute, section, higher, description in (
        ("aAcc", _overall(pixel_accuracy), "overall", True, "pixel accuracy over labelled pixels"),
        ("mAcc", _overall(mean_accuracy), "overall", True, "mean per-class accuracy"),
        ("mIoU", _overall(mean_iou), "overall", True, "mean per-class IoU"),
        ("class_accuracy_std", lambda c: class_spread(class_accuracy(c.sum(-3))), "fairness", False,
         "std of per-class accuracy (ddof 0)"),
        ("worst_class_accuracy", lambda c: _nanmin(class_accuracy(c.sum(-3))), "fairness", True, "lowest per-class accuracy"),
        ("class_iou_std", lambda c: class_spread(class_iou(c.sum(-3))), "fairness", False, "std of per-class IoU (ddof 0)"),
        ("worst_class_iou", lambda c: _nanmin(class_iou(c.sum(-3))), "fairness", True, "lowest per-class IoU"),
        ("group_miou_gap", lambda c: _across_groups(mean_iou(c), _spread), "fairness", False,
         "max - min mIoU over protected groups"),
        ("worst_group_miou", lambda c: _across_groups(mean_iou(c), _nanmin), "fairness", True, "lowest mIoU of a protected group"),
        ("group_macc_gap", lambda c: _across_groups(mean_accuracy(c), _spread), "fairness", False,
         "max - min mAcc over protected groups"),
    )
) + (
    Metric("group_aAcc", pixel_accuracy, "groups", True, "aAcc of each protected group", "segmentation", "aAcc"),
    Metric("group_mAcc", mean_accuracy, "groups", True, "mAcc of each protected group", "segmentation", "mAcc"),
    Metric("group_mIoU", mean_iou, "groups", True, "mIoU of each protected group", "segmentation", "mIoU"),
    Metric("group_worst_class_accuracy", lambda c: _nanmin(class_accuracy(c)), "groups", True,
           "lowest per-class accuracy within each protected group", "segmentation", "worst_class_accuracy"),
    Metric("group_worst_class_iou", lambda c: _nanmin(class_iou(c)), "groups", True,
           "lowest per-class IoU within each protected group", "segmentation", "worst_class_iou"),
    Metric("group_class_iou_std", lambda c: class_spread(class_iou(c)), "groups", False,
           "std of per-class IoU within each protected group", "segmentation", "class_iou_std"),
    Metric("class_accuracy", lambda c: class_accuracy(c.sum(-3)), "classes", True, "accuracy of each class", "segmentation",
           "accuracy"),
    Metric("class_iou", lambda c: class_iou(c.sum(-3)), "classes", True, "IoU of each class", "segmentation", "iou"),
)
