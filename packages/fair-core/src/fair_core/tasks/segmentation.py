"""Semantic segmentation: dense masks, per-pixel cross-entropy, metrics from one confusion matrix.

* Batches are ``{image, mask, group, index}``: ``mask`` ``(H, W)`` holds class indices, with the
  dataset's ignore index for unlabelled pixels; ``group`` is the image-level protected group
  (``all`` when the spec names no sensitive attribute). Items of different sizes (evaluation
  images of ADE20K) are padded to the largest (images with 0, the mean colour after
  normalisation; masks with the ignore index) and the batch records each ``image_size`` and
  ``mask_size``, so the padding never counts: the logits of an image's own area are resized to its
  own mask. An image may be resized without its mask (mmseg's test pipeline): metrics are then
  computed at the annotation's resolution.
* ``erm`` minimises the per-pixel cross-entropy of the logits, resized to the mask size
  (bilinear, as mmsegmentation), ignoring unlabelled pixels.
* Inference is on the whole image, or by sliding windows (``eval.params.inference: slide``,
  mmseg's ``slide_inference``: overlapping crops, their logits averaged where they overlap).
* Evaluation gathers one confusion matrix ``(K, K)`` per image across processes (exactly once
  per image) and sums them per group into ``(G, K, K)``: every metric of
  :mod:`fair_core.metrics.segmentation` is a function of that sum. ``per_image.csv`` gives each
  image's pixel accuracy and mIoU.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ..atomic import write_text
from ..data import DataInfo, FairDataset, Preprocessing, SplitData, group_names
from ..errors import FairError
from ..hub import FairModel
from ..metrics import Metric, intersect_groups
from ..metrics.segmentation import class_iou, image_confusion, pixel_accuracy
from .base import Evaluation, Task, collate, metric_sections, table_rows

PairTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def resize_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits ``(N, K, h, w)`` resized to ``size`` (bilinear), unchanged when already that size."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pad_collate(items: list[dict[str, Any]], ignore_index: int) -> dict[str, Tensor]:
    """Stack segmentation items; items of different sizes are padded bottom-right to the largest
    (images with 0, masks with ``ignore_index``), and ``image_size`` / ``mask_size`` ``(N, 2)``
    record each item's own size."""
    images, masks = [item["image"] for item in items], [torch.as_tensor(item["mask"]) for item in items]
    if len({tuple(t.shape) for t in images}) == 1 and len({tuple(t.shape) for t in masks}) == 1:
        return collate(items)
    batch = collate([{k: v for k, v in item.items() if k not in ("image", "mask")} for item in items])
    batch["image_size"] = torch.tensor([t.shape[-2:] for t in images])
    batch["mask_size"] = torch.tensor([t.shape[-2:] for t in masks])
    h, w = batch["image_size"].amax(0).tolist()
    batch["image"] = images[0].new_zeros(len(items), images[0].shape[0], h, w)
    h, w = batch["mask_size"].amax(0).tolist()
    batch["mask"] = torch.full((len(items), h, w), ignore_index, dtype=torch.long)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        batch["image"][i, :, : image.shape[-2], : image.shape[-1]] = image
        batch["mask"][i, : mask.shape[-2], : mask.shape[-1]] = mask
    return batch


def own_logits(logits: Tensor, batch: dict[str, Tensor]):
    """``(logits, mask)`` of each image of a padded batch: the logits of the image's own area
    (the padding cut off at the input's resolution), resized to its own mask, and that mask."""
    padded = batch["image"].shape[-2:]
    for i, ((h, w), (mh, mw)) in enumerate(zip(batch["image_size"].tolist(), batch["mask_size"].tolist(), strict=True)):
        own = resize_logits(logits[i : i + 1], padded)[..., :h, :w]
        yield resize_logits(own, (mh, mw)), batch["mask"][i : i + 1, :mh, :mw]


def slide_logits(forward: Callable[[Tensor], Tensor], images: Tensor, crop_size: int, stride: int) -> Tensor:
    """Sliding-window inference (mmseg's ``slide_inference``): crops of ``crop_size`` every
    ``stride`` pixels (the last one flush with the border), each crop's logits resized to the
    crop, summed into the image and divided by the number of crops covering each pixel."""
    height, width = images.shape[-2:]
    rows = max(height - crop_size + stride - 1, 0) // stride + 1
    cols = max(width - crop_size + stride - 1, 0) // stride + 1
    total, count = None, images.new_zeros(1, 1, height, width)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop_size, height), min(c * stride + crop_size, width)
            y1, x1 = max(y2 - crop_size, 0), max(x2 - crop_size, 0)
            logits = resize_logits(forward(images[..., y1:y2, x1:x2]).float(), (y2 - y1, x2 - x1))
            if total is None:
                total = logits.new_zeros(images.shape[0], logits.shape[1], height, width)
            total[..., y1:y2, x1:x2] += logits
            count[..., y1:y2, x1:x2] += 1
    return total / count


class SegmentationDataset(FairDataset):
    """A split of images with dense masks: items ``{image, mask, group, index}``.

    ``pair_transform`` (the dataset's joint crop/flip/resize) runs on ``(image, mask)`` before
    ``transform`` (photometric changes and normalisation) runs on the image."""

    def __init__(self, split: SplitData, info: DataInfo, transform: Callable[[Tensor], Tensor] | None = None,
                 rows: Tensor | None = None, pair_transform: PairTransform | None = None):
        self.split, self.info, self.transform, self.pair_transform = split, info, transform, pair_transform
        n = len(split.masks)
        self.rows = torch.arange(n) if rows is None else rows.long()
        if info.sensitive:
            sizes = [len(split.values[a]) for a in info.sensitive]
            self.row_groups = intersect_groups(torch.stack([split.attributes[a].long() for a in info.sensitive], 1), sizes)
        else:
            self.row_groups = torch.zeros(n, dtype=torch.long)
        self.groups = self.row_groups[self.rows]
        self.targets = None  # the target is the mask of each image

    @classmethod
    def describe(cls, data: SplitData, dataset: str, target: str | None, sensitive: Sequence[str],
                 preprocessing: Preprocessing) -> DataInfo:
        if data.masks is None or not data.mask_classes:
            raise FairError(f"task: {dataset} has no segmentation masks; its tasks are classification or verification")
        if target not in (None, "mask"):
            raise FairError(f"data.target: the target of a segmentation run is the mask; leave it out (got {target!r})")
        for attribute in sensitive:
            if attribute not in data.attributes:
                available = ", ".join(sorted(data.attributes)) or "none"
                raise FairError(f"data.sensitive: unknown attribute {attribute!r} for {dataset}; available: {available}")
        return DataInfo(
            dataset=dataset, target="mask", sensitive=tuple(sensitive), class_names=tuple(data.mask_classes),
            group_names=group_names(data.values, sensitive) if sensitive else ("all",),
            sensitive_values={a: tuple(data.values[a]) for a in sensitive}, preprocessing=preprocessing,
            ignore_index=data.ignore_index,
        )

    @classmethod
    def from_split(cls, split: SplitData, info: DataInfo, builder, train: bool) -> SegmentationDataset:
        transform = builder.train_transform() if train else builder.eval_transform()
        return cls(split, info, transform, pair_transform=builder.pair_transform(train))

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        image, mask = self.split.images[row], torch.as_tensor(self.split.masks[row]).long()
        if self.pair_transform is not None:
            image, mask = self.pair_transform(image, mask)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "mask": mask, "group": self.groups[i], "index": row}

    def _view(self, rows: Tensor, transform: Callable[[Tensor], Tensor] | None) -> SegmentationDataset:
        return type(self)(self.split, self.info, transform, rows, self.pair_transform)

    def count_table(self) -> tuple[str, tuple[str, ...], Tensor]:
        return "class (pixels)", self.info.class_names, self.cell_counts()

    def cell_counts(self) -> Tensor:
        """``counts[k, g]``: labelled pixels of class ``k`` in the images of group ``g``."""
        info = self.info
        counts = torch.zeros(info.num_classes, info.num_groups, dtype=torch.long)
        for position, row in enumerate(self.rows.tolist()):
            mask = torch.as_tensor(self.split.masks[row]).long().reshape(-1)
            mask = mask[mask != info.ignore_index]
            counts[:, int(self.groups[position])] += torch.bincount(mask, minlength=info.num_classes)[: info.num_classes]
        return counts


class SegmenterModel(FairModel, pipeline_tag="image-segmentation", tags=["fairness", "image-segmentation"]):
    """A fair segmenter: ``segment(images)`` gives a class index per pixel ``(N, H, W)`` at the
    size of the input, ``segment_proba`` the class probabilities ``(N, K, H, W)``, for float
    images ``(N, 3, H, W)`` in [0, 1]."""

    def segment_proba(self, images: Tensor) -> Tensor:
        """Class probabilities, by the inference (whole image or sliding windows) the run evaluated with."""
        size, inference = images.shape[-2:], self.fair_config.get("inference", {"mode": "whole"})
        if inference["mode"] == "slide":
            def logits(x: Tensor) -> Tensor:
                return resize_logits(slide_logits(self, x, inference["crop_size"], inference["stride"]), size)
        else:
            def logits(x: Tensor) -> Tensor:
                return resize_logits(self(x).float(), size)
        return self._infer(images, lambda x: torch.softmax(logits(x), dim=1))

    def segment(self, images: Tensor) -> Tensor:
        return self.segment_proba(images).argmax(dim=1)


class SegmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_image: bool = Field(True, description="write per_image.csv (pixel accuracy and mIoU of each evaluated image)")
    inference: Literal["whole", "slide"] = Field("whole", description="whole image, or sliding windows of crop_size")
    crop_size: int = Field(512, ge=1, description="slide: the window size (square), as the training crops")
    stride: int = Field(341, ge=1, description="slide: pixels between windows (mmseg's ADE20K configs: 341 for 512)")

    @model_validator(mode="after")
    def _stride_within_crop(self) -> SegmentationParams:
        if self.inference == "slide" and self.stride > self.crop_size:
            raise ValueError(f"stride ({self.stride}) larger than crop_size ({self.crop_size}) leaves pixels unseen")
        return self


class SegmentationEvaluation(Evaluation):
    """The per-group confusion ``(G, K, K)`` and, per image, its pixels, accuracy and mIoU."""

    def __init__(self, task: SegmentationTask, dataset: SegmentationDataset):
        super().__init__(task, dataset)
        info = dataset.info
        self.confusion = torch.zeros(info.num_groups, info.num_classes, info.num_classes, dtype=torch.long)
        self._images: list[Tensor] = []

    def outputs(self, method, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        params, info = self.task.eval_params, self.dataset.info
        images = batch["image"]
        if params.inference == "slide":
            logits = slide_logits(lambda x: method.predict(model, x), images, params.crop_size, params.stride)
        else:
            logits = method.predict(model, images).float()
        if "image_size" in batch:  # a padded batch: each image's own logits against its own mask
            confusion = torch.cat([image_confusion(own, mask, info.num_classes, info.ignore_index)
                                   for own, mask in own_logits(logits, batch)])
        else:
            confusion = image_confusion(resize_logits(logits, batch["mask"].shape[-2:]), batch["mask"],
                                        info.num_classes, info.ignore_index)
        return confusion, batch["group"], batch["index"]

    def update(self, gathered: tuple[Tensor, ...]) -> None:
        confusion, groups, index = (t.cpu() for t in gathered)
        self.confusion.index_add_(0, groups.long(), confusion.long())
        pixels = confusion.sum((-1, -2)).double()
        iou = class_iou(confusion)
        present = confusion.sum(-1) > 0  # classes labelled in the image
        image_miou = torch.where(present, iou.nan_to_num(0.0), 0.0).sum(-1) / present.sum(-1).clamp_min(1)
        image_miou = torch.where(present.any(-1), image_miou, torch.full_like(image_miou, float("nan")))
        self._images.append(torch.stack([index.double(), groups.double(), pixels, pixel_accuracy(confusion), image_miou], 1))

    def state(self) -> Tensor:
        return self.confusion

    def per_image(self) -> Tensor:
        """Rows ``(index, group, pixels, accuracy, mIoU)`` ordered by split row."""
        table = torch.cat(self._images) if self._images else torch.zeros(0, 5, dtype=torch.double)
        return table[table[:, 0].argsort()]


class SegmentationTask(Task):
    """Label every pixel; fairness across classes (rare classes) and across protected groups."""

    name = "segmentation"
    description = "semantic segmentation: per-pixel cross-entropy, metrics from one summed confusion matrix"
    EvalParams = SegmentationParams
    dataset_class = SegmentationDataset
    pipeline_tag = "image-segmentation"
    model_noun = "semantic segmentation model"
    model_class = SegmenterModel

    def collate(self, items: list[dict[str, Any]], info: DataInfo) -> dict[str, Tensor]:
        return pad_collate(items, info.ignore_index)

    def loss(self, outputs: Tensor, batch: dict[str, Tensor], info: DataInfo) -> Tensor:
        """Per-pixel cross-entropy (mean over the labelled pixels of the batch), unlabelled pixels ignored."""
        if "image_size" in batch:  # padded: each image's own logits against its own mask
            pairs = list(own_logits(outputs, batch))
            total = sum(F.cross_entropy(o, m, ignore_index=info.ignore_index, reduction="sum") for o, m in pairs)
            return total / sum(int((m != info.ignore_index).sum()) for _, m in pairs)
        masks = batch["mask"]
        return F.cross_entropy(resize_logits(outputs, masks.shape[-2:]), masks, ignore_index=info.ignore_index)

    def model_config(self, info: DataInfo) -> dict[str, Any]:
        params = self.eval_params
        inference = {"mode": params.inference} | ({"crop_size": params.crop_size, "stride": params.stride}
                                                   if params.inference == "slide" else {})
        return {"ignore_index": info.ignore_index, "inference": inference}

    def evaluation(self, dataset: SegmentationDataset) -> SegmentationEvaluation:
        return SegmentationEvaluation(self, dataset)

    def summarize(self, evaluation: SegmentationEvaluation, metrics: Sequence[Metric], eval_spec: Any,
                  seed: int) -> dict[str, Any]:
        confusion, info = evaluation.state(), evaluation.dataset.info
        sections = metric_sections(confusion, metrics)
        images = evaluation.per_image()
        group_images = torch.bincount(images[:, 1].long(), minlength=info.num_groups)
        groups = table_rows("group", info.group_names,
                            {"n": group_images.tolist(), "pixels": confusion.sum((-1, -2)).tolist()}, sections["group_columns"])
        classes = table_rows("class", info.class_names, {"pixels": confusion.sum((0, 2)).tolist()}, sections["class_columns"])
        overall = {**sections["overall"], "n": int(images.shape[0]), "pixels": int(confusion.sum())}
        return {"overall": overall, "groups": groups, "classes": classes, "fairness": sections["fairness"]}

    def write_outputs(self, directory: Path, evaluation: SegmentationEvaluation) -> None:
        if not self.eval_params.per_image:
            return
        names = evaluation.dataset.info.group_names
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["index", "group", "pixels", "accuracy", "mIoU"])
        for index, group, pixels, accuracy, miou in evaluation.per_image().tolist():
            writer.writerow([int(index), names[int(group)], int(pixels),
                             *("" if v != v else f"{v:.6f}" for v in (accuracy, miou))])
        write_text(directory / "per_image.csv", buffer.getvalue())

    def usage_lines(self, repo_id: str, config: dict[str, Any]) -> list[str]:
        return ["from fair_core import from_pretrained", "", f'model = from_pretrained("{repo_id}")',
                "masks = model.segment(images)  # float tensor (N, 3, H, W) in [0, 1] -> class per pixel (N, H, W)",
                f"# classes: {list(config['data']['class_names'])}"]
