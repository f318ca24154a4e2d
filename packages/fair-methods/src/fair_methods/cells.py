"""(target, group) cell statistics shared by the resampling and reweighting methods.

Notation of the ISSTA 2024 study: ``C`` classes, ``B`` groups, cell ``g = y + b * C``,
``n_g`` samples in cell ``g``, ``N`` samples in all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fair_core import FairDataset


def cell_index(targets: Tensor, groups: Tensor, num_classes: int) -> Tensor:
    """Cell index ``g = y + b * C``."""
    return targets + groups * num_classes


def cell_of(dataset: FairDataset) -> Tensor:
    """Cell index ``g = y + b * C`` of every sample of ``dataset``."""
    return cell_index(dataset.targets, dataset.groups, dataset.info.num_classes)


def by_split_row(dataset: FairDataset, values: Tensor) -> Tensor:
    """A table indexed by split row (what batches carry as ``index``) holding ``values[i]`` at the
    row of sample ``i``; rows not in ``dataset`` hold zeros."""
    table = torch.zeros(int(dataset.rows.max()) + 1, *values.shape[1:], dtype=values.dtype)
    table[dataset.rows] = values
    return table


def resample_cells(cells: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Positions (into ``cells``, the cell index of each sample) that give every non-empty cell
    exactly ``size`` samples: cells larger than ``size`` are sampled without replacement; smaller
    ones keep all their samples and draw the rest with replacement. Empty cells stay empty."""
    cells = cells.cpu()
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


def balanced_cell_size(cells: Tensor, mode: str) -> int:
    """The smallest (``"us"``) or largest (``"os"``) non-empty cell size."""
    sizes = torch.bincount(cells.cpu())
    sizes = sizes[sizes > 0]
    return int(sizes.min() if mode == "us" else sizes.max())


def inverse_frequency_weights(cells: Tensor) -> Tensor:
    """``N / n_{g_i}`` for every sample ``i`` of cell ``g_i`` (inverse cell frequency, not normalised)."""
    sizes = torch.bincount(cells).double()
    return (cells.numel() / sizes[cells]).float()
