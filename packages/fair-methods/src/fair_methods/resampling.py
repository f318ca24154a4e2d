"""Pre-processing by resampling or reweighting the (target, group) cells.

As run by the ISSTA 2024 fairness study (Chen et al., "A Large-Scale Empirical Study on Improving
the Fairness of Image Classification Models", arXiv 2401.03695):

* **US** (undersampling): once, before training, every (y, b) cell is sampled without
  replacement down to the smallest cell's size ``min_g n_g``; plain cross-entropy.
* **OS** (oversampling): once, every cell is resampled with replacement up to the largest cell's
  size ``max_g n_g`` (all original samples kept); plain cross-entropy.
* **UW** (upweighting): ``L = (1/|batch|) sum_i CE_i * N / n_{g_i}`` (inverse cell frequency,
  not normalised, so it also scales the effective learning rate as in the study).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fair_core import FairDataset, Method, TrainingData

from .cells import balanced_cell_size, by_split_row, cell_of, inverse_frequency_weights, resample_cells


class _CellResampling(Method):
    """Resample every (target, group) cell, once, to the smallest (``us``) or largest (``os``) size."""

    mode: ClassVar[Literal["us", "os"]]
    stage = "pre-processing"

    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        cells = cell_of(train_set)
        return TrainingData(train_set.select(resample_cells(cells, balanced_cell_size(cells, self.mode), generator)))


class Undersampling(_CellResampling):
    """Balance the (target, group) cells by undersampling to the smallest cell.

    The balanced set is small (``cells x min_g n_g`` samples), so US needs many more epochs than
    ERM (the study: 2000 on CIFAR-10S) and a decaying learning rate, without which the last
    epoch's weights are noisy; ``examples/us.json`` gives it ERM's number of steps and the study's
    decay."""

    mode = "us"
    description = "undersample every (target, group) cell to the smallest one"
    paper = "Chen et al., ISSTA 2024 (arXiv 2401.03695), baseline US"


class Oversampling(_CellResampling):
    """Balance the (target, group) cells by oversampling to the largest cell."""

    mode = "os"
    description = "oversample every (target, group) cell to the largest one"
    paper = "Chen et al., ISSTA 2024 (arXiv 2401.03695), baseline OS"


class Upweighting(Method):
    """Weight each sample's loss by the inverse frequency of its (target, group) cell."""

    stage = "pre-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "weight the loss by N / n_g of each sample's (target, group) cell"
    paper = "Chen et al., ISSTA 2024 (arXiv 2401.03695), baseline UW"

    weights: Tensor  # N / n_g by split row (the rows of the training split)

    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        self.weights = by_split_row(train_set, inverse_frequency_weights(cell_of(train_set)))
        return TrainingData(train_set)

    def compute_loss(self, model, batch) -> Tensor:
        losses = F.cross_entropy(model(batch["image"]), batch["target"], reduction="none")
        return (losses * self.weights.to(losses.device)[batch["index"]]).mean()
