"""Verification at one operating point: a global threshold set by a false-positive rate over all
pairs of the evaluated images, and the true- and false-positive rates of each protected group.

For ``N`` L2-normalised embeddings with identities, the similarity of images ``i != j`` is
``s_ij = e_i . e_j``. Every ordered pair ``(i, j)``, ``i != j``, is *positive* when both images
show the same identity and *negative* otherwise. For a target rate ``fpr``:

* the threshold ``t`` is the ``k``-th largest negative similarity, ``k = max(1, ceil(fpr * n_neg))``
  (exact, not found by bisection); a pair is accepted when ``s_ij > t``;
* image ``i`` counts ``tp_i`` accepted and ``fn_i`` rejected positives (its self-match removed),
  ``fp_i`` accepted and ``tn_i`` rejected negatives;
* group ``g``'s rates pool its images: ``TPR_g = sum_{i in g} tp_i / sum_{i in g} (tp_i + fn_i)``
  and ``FPR_g = sum_{i in g} fp_i / sum_{i in g} (fp_i + tn_i)`` (negatives with any image).

A fair model accepts the genuine pairs of every group alike at one threshold (equal TPR_g) and
errs alike on impostors (FPR ratio near 1), which is how NIST's FRVT demographic report and the
instance-level protocol of MixFairFace judge face recognisers. Everything is computed in blocks
of rows of the similarity matrix: memory ``O(N * block_size + k)``, never ``N x N``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fair_core.tasks import EmbeddingSet


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold at the target FPR and every image's pair counts at it."""

    threshold: float
    tp: Tensor
    fn: Tensor
    fp: Tensor
    tn: Tensor


def _blocks(n: int, block_size: int):
    for start in range(0, n, block_size):
        yield slice(start, min(start + block_size, n))


def negative_threshold(embeddings: Tensor, identities: Tensor, fpr: float, block_size: int = 4096) -> float:
    """The ``ceil(fpr * n_neg)``-th largest similarity of the ordered negative pairs (nan if none),
    kept as a running top-k over row blocks."""
    identity_counts = torch.bincount(identities)
    n = identities.numel()
    negatives = n * n - int((identity_counts.double() ** 2).sum().item())
    if negatives <= 0:
        return float("nan")
    k = max(1, math.ceil(fpr * negatives))
    best = torch.empty(0, dtype=embeddings.dtype)
    for rows in _blocks(n, block_size):
        similarity = embeddings[rows] @ embeddings.T
        same = identities[rows].unsqueeze(1) == identities.unsqueeze(0)  # includes the self-match
        values = similarity.masked_fill(same, float("-inf")).flatten()
        values = values.topk(min(k, values.numel())).values
        best = torch.cat([best, values]).topk(min(k, best.numel() + values.numel())).values
    return float(best[k - 1])


def pair_counts(embeddings: Tensor, identities: Tensor, threshold: float, block_size: int = 4096) -> OperatingPoint:
    """Per-image accepted/rejected positive and negative pairs at ``threshold`` (``s > t`` accepts)."""
    n = identities.numel()
    tp, fn, fp, tn = (torch.zeros(n, dtype=torch.long) for _ in range(4))
    positions = torch.arange(n)
    for rows in _blocks(n, block_size):
        accepted = embeddings[rows] @ embeddings.T > threshold
        same = identities[rows].unsqueeze(1) == identities.unsqueeze(0)
        itself = positions[rows].unsqueeze(1) == positions.unsqueeze(0)
        positive = same & ~itself
        tp[rows] = (accepted & positive).sum(1)
        fn[rows] = (~accepted & positive).sum(1)
        fp[rows] = (accepted & ~same).sum(1)
        tn[rows] = (~accepted & ~same).sum(1)
    return OperatingPoint(threshold, tp, fn, fp, tn)


def operating_point(state: EmbeddingSet) -> OperatingPoint:
    """The operating point of an evaluation at ``state.params.fpr`` (computed once, then cached)."""
    key = ("operating_point", state.params.fpr, state.params.block_size)
    if key not in state.cache:
        embeddings = state.embeddings.float()
        threshold = negative_threshold(embeddings, state.identities, state.params.fpr, state.params.block_size)
        state.cache[key] = pair_counts(embeddings, state.identities, threshold, state.params.block_size)
    return state.cache[key]


def _pooled_rate(hits: Tensor, misses: Tensor, groups: Tensor | None, num_groups: int) -> Tensor:
    hits, misses = hits.double(), misses.double()
    if groups is None:
        num, den = hits.sum(), (hits + misses).sum()
    else:
        num = torch.zeros(num_groups, dtype=torch.double).index_add_(0, groups, hits)
        den = torch.zeros(num_groups, dtype=torch.double).index_add_(0, groups, hits + misses)
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def true_positive_rate(state: EmbeddingSet) -> Tensor:
    """TPR of all positive pairs at the operating point."""
    point = operating_point(state)
    return _pooled_rate(point.tp, point.fn, None, state.num_groups)


def group_true_positive_rate(state: EmbeddingSet) -> Tensor:
    """``TPR_g`` of each group ``(G,)``."""
    point = operating_point(state)
    return _pooled_rate(point.tp, point.fn, state.groups, state.num_groups)


def group_false_positive_rate(state: EmbeddingSet) -> Tensor:
    """``FPR_g`` of each group ``(G,)``."""
    point = operating_point(state)
    return _pooled_rate(point.fp, point.tn, state.groups, state.num_groups)


def _defined(values: Tensor) -> Tensor:
    return values[~values.isnan()]


def tpr_gap(state: EmbeddingSet) -> Tensor:
    """``max_g TPR_g - min_g TPR_g``."""
    rates = _defined(group_true_positive_rate(state))
    return rates.max() - rates.min() if rates.numel() else torch.tensor(float("nan"))


def worst_group_tpr(state: EmbeddingSet) -> Tensor:
    """``min_g TPR_g``."""
    rates = _defined(group_true_positive_rate(state))
    return rates.min() if rates.numel() else torch.tensor(float("nan"))


def fpr_ratio(state: EmbeddingSet) -> Tensor:
    """``max_g FPR_g / min_g FPR_g`` (1 is fair; nan when a group has no false positive)."""
    rates = _defined(group_false_positive_rate(state))
    if rates.numel() == 0 or rates.min() <= 0:
        return torch.tensor(float("nan"))
    return rates.max() / rates.min()
