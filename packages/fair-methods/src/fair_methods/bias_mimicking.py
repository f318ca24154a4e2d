"""BM: Bias Mimicking (Qraitem, Saenko & Plummer, "Bias Mimicking: A Simple Sampling Approach for
Bias Mitigation", CVPR 2023).

* One binary (one-vs-rest) head per class ``y``, trained with BCE.
* Mimicking: for head ``y`` every sample of class ``y`` is kept; every other class ``y'`` is
  subsampled so that the bias distribution of its kept samples *mimics* ``p(b | y)``: the largest
  counts ``n'_b`` with

      maximise sum_b n'_b   s.t.   0 <= n'_b <= count(y', b),   n'_b = p(b | y) * sum_k n'_k

  (a linear program, solved with ``scipy.optimize.linprog``, counts floored). The dropped samples
  are masked out of head ``y``'s loss; masks are drawn once, before training:
  ``L = sum_{i,y} BCE(z_iy, 1[y_i = y]) * m_iy / sum_{i,y} m_iy``.
* After each epoch, a separate linear head (``D -> C``) is trained with CE on that epoch's
  detached, L2-normalised features; it makes the predictions. Its data can be rebalanced:
  ``final_head_sampling`` none | us | os | uw (as the pre-processing methods of this package).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linprog
from torch import Tensor, nn

from fair_core import FairDataset, Method, TrainingData

from .cells import balanced_cell_size, by_split_row, cell_index, inverse_frequency_weights, resample_cells


class BMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    final_head_sampling: Literal["none", "us", "os", "uw"] = Field("none", description="data of the per-epoch final head")
    final_head_batch_size: int = Field(128, ge=1)


def mimicking_counts(counts: np.ndarray, target: int) -> np.ndarray:
    """Kept samples ``n'[y', b]`` of every class for head ``target`` (``counts[y, b]`` given).

    Class ``target`` keeps everything; each other class gets the largest counts whose bias
    distribution equals ``p(b | target)``."""
    counts = np.asarray(counts, dtype=float)
    p = counts[target] / counts[target].sum()
    kept = counts.copy()
    num_groups = counts.shape[1]
    for other in range(counts.shape[0]):
        if other == target:
            continue
        equality = np.eye(num_groups) - p[:, None] * np.ones((1, num_groups))  # n'_b - p_b sum_k n'_k = 0
        solution = linprog(-np.ones(num_groups), A_eq=equality, b_eq=np.zeros(num_groups),
                           bounds=list(zip(np.zeros(num_groups), counts[other], strict=True)), method="highs")
        kept[other] = np.floor(solution.x + 1e-6)
    return kept


def mimicking_masks(dataset: FairDataset, generator: torch.Generator) -> Tensor:
    """``mask[i, y]``: whether sample ``i`` enters head ``y``'s loss."""
    c, b = dataset.info.num_classes, dataset.info.num_groups
    counts = dataset.cell_counts().numpy()  # counts[y, b]
    masks = torch.zeros(len(dataset), c, dtype=torch.bool)
    for head in range(c):
        kept = mimicking_counts(counts, head)
        for y in range(c):
            for g in range(b):
                members = torch.nonzero((dataset.targets == y) & (dataset.groups == g)).flatten()
                chosen = members[torch.randperm(members.numel(), generator=generator)[: int(kept[y, g])]]
                masks[chosen, head] = True
    return masks


class BiasMimickingNet(nn.Module):
    """The backbone with one binary logit per class, plus the final linear head that predicts."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.final_head = nn.Linear(backbone.feature_dim, num_classes)

    def forward(self, images: Tensor, with_features: bool = False):
        binary_logits, features = self.backbone(images, with_features=True)
        return (binary_logits, features) if with_features else self.final_head(F.normalize(features, dim=1))


class BiasMimicking(Method):
    """Per-class binary heads on bias-mimicking subsamples; a final linear head predicts."""

    Params = BMParams
    stage = "pre-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "per-class binary heads with bias-mimicking masks (LP), per-epoch final linear head"
    paper = "Qraitem, Saenko & Plummer, Bias Mimicking, CVPR 2023"
    ddp_find_unused_parameters = True  # the final head is trained outside the main step

    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        self.masks = by_split_row(train_set, mimicking_masks(train_set, generator))
        return TrainingData(train_set)

    def build_model(self, backbone: nn.Module) -> nn.Module:
        return BiasMimickingNet(backbone, self.info.num_classes)

    def configure_optimizers(self, model, make_optimizer):
        return [make_optimizer(model.backbone.parameters()), make_optimizer(model.final_head.parameters())]

    def on_epoch_start(self, model, trainer) -> None:
        self._epoch_features: list[tuple[Tensor, Tensor, Tensor]] = []

    def training_step(self, model, batch, trainer):
        binary_logits, features = model(batch["image"], with_features=True)
        onehot = F.one_hot(batch["target"], self.info.num_classes).float()
        mask = self.masks.to(binary_logits.device)[batch["index"]].float()
        bce = F.binary_cross_entropy_with_logits(binary_logits, onehot, reduction="none")
        loss = (bce * mask).sum() / mask.sum().clamp_min(1)
        trainer.step(loss, trainer.optimizers[0])
        self._epoch_features.append((F.normalize(features.detach(), dim=1), batch["target"], batch["group"]))
        return {"loss": loss.detach()}

    def on_epoch_end(self, model, trainer) -> None:
        """Train the final linear head on this epoch's features (one pass, rebalanced as asked)."""
        features, targets, groups = (trainer.accelerator.gather(torch.cat(parts))  # every process, same data
                                     for parts in zip(*self._epoch_features, strict=True))
        self._epoch_features = []
        generator = torch.Generator().manual_seed(trainer.spec.train.seed * 7919 + trainer.epoch)
        head = trainer.accelerator.unwrap_model(model).final_head
        cells = cell_index(targets, groups, self.info.num_classes)
        weights = torch.ones(len(cells), device=features.device)
        mode = self.params.final_head_sampling
        if mode in {"us", "os"}:
            picks = resample_cells(cells, balanced_cell_size(cells, mode), generator)
            order = picks[torch.randperm(picks.numel(), generator=generator)]
        else:
            order = torch.randperm(len(cells), generator=generator)
            if mode == "uw":
                weights = inverse_frequency_weights(cells)
        for start in range(0, len(order), self.params.final_head_batch_size):
            idx = order[start:start + self.params.final_head_batch_size].to(features.device)
            losses = F.cross_entropy(head(features[idx]), targets[idx], reduction="none")
            optimizer = trainer.optimizers[1]
            optimizer.zero_grad(set_to_none=True)
            (losses * weights[idx]).mean().backward()
            optimizer.step()
