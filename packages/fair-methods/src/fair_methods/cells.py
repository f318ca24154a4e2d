"""(target, group) cell statistics shared by the resampling and reweighting methods.

Notation of the ISSTA 2024 study: ``C`` classes, ``B`` groups, cell ``g = y + b * C``,
``n_g`` samples in cell ``g``, ``N`` samples in all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fair_core import FairDataset


def cell_of(dataset: FairDataset) -> Tensor:
    """Cell index ``g = y + b * C`` of every sample."""
    return dataset.targets + dataset.groups * dataset.info.num_classes


def cell_sizes(dataset: FairDataset) -> Tensor:
    """``n_g`` for every cell ``g`` (``C * B`` entries; empty cells are 0)."""
    return torch.bincount(cell_of(dataset), minlength=dataset.info.num_classes * dataset.info.num_groups)


def resample_cells(dataset: FairDataset, size: int, generator: torch.Generator) -> Tensor:
    """Positions that give every non-empty cell exactly ``size`` samples: cells larger than ``size``
    are sampled without replacement; smaller ones keep all their samples and draw the rest with
    replacement. Empty cells stay empty."""
    cells = cell_of(dataset)
    chosen = []
    for g in torch.unique(cells).tolist():
        members = torch.nonzero(cells == g).flatten()
        n = members.numel()
        if n >= size:
            chosen.append(members[torch.randperm(n, generator=generator)[:size]])
        else:
            extra = members[torch.randint(0, n, (size - n,), generator=generator)]
            chosen.append(torch.cat([members, extra]))
    return torch.cat(chosen).sort().values


def inverse_frequency_weights(dataset: FairDataset) -> Tensor:
    """``N / n_{g_i}`` for every sample ``i`` (inverse cell frequency, not normalised)."""
    sizes = cell_sizes(dataset).double()
    return (len(dataset) / sizes[cell_of(dataset)]).float()
