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
instance-level protocol of MixFairFace judge face recognisers (:mod:`fair_face.val_inst` uses
the same counts at its own rate).

:func:`counts_at_fpr` does it in one GEMM pass over blocks of ``block_size`` rows of the
similarity matrix (memory ``O(N * block_size + k)``, never ``N x N``): a streaming top-k keeps
the ``k`` largest negatives with the row of each, so the negatives above the final threshold,
which are among them, give every ``fp_i``; the positives are counted from each identity's own
small Gram matrix. Once ``k`` negatives are kept, a block is only compared with the running
``k``-th largest (segment maxima first), which keeps the pass close to the cost of the GEMM.
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


#: Similarities one step of the streaming top-k selects from at once (``torch.topk`` on CPU copies
#: its input as (value, index) pairs: 4M similarities are a 64 MB copy).
TOPK_ELEMENTS = 1 << 22
#: Similarities one filtering step of the streaming top-k reads at once: large, as each step costs
#: a few dozen tensor operations (and their thread synchronisations), but bounded, as its hits
#: (rare once a full block has been seen) are gathered.
FILTER_ELEMENTS = 1 << 25
#: Width of the segments whose maxima :func:`indices_above` compares first.
SEGMENT = 64

def negative_pairs(identity_sizes: Tensor) -> int:
    """Ordered negative pairs of images with identities of these sizes: ``N^2 - sum_c n_c^2``."""
    n = int(identity_sizes.sum())
    return n * n - int((identity_sizes.long() ** 2).sum())


def indices_above(values: Tensor, bound: Tensor) -> Tensor:
    """Positions of the entries of the 1-d ``values`` above ``bound``, for rare hits: the maxima of
    segments of :data:`SEGMENT` entries are compared first (one read of ``values``, no mask of its
    size), then only the segments holding a hit."""
    whole = values.numel() // SEGMENT * SEGMENT
    hot = (values[:whole].view(-1, SEGMENT).amax(1) > bound).nonzero().squeeze(1)
    index = (hot.unsqueeze(1) * SEGMENT + torch.arange(SEGMENT)).reshape(-1)
    index = index[values[index] > bound]
    if whole < values.numel():
        index = torch.cat([index, whole + (values[whole:] > bound).nonzero().squeeze(1)])
    return index


def largest_negatives(embeddings: Tensor, labels: Tensor, k: int, block_size: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest ordered-negative similarities (descending) and the row ``i`` of each.

    Blocks of ``block_size`` rows of ``S`` are computed into one buffer, then read in steps of
    whole rows. While fewer than ``k`` are kept, a step of :data:`TOPK_ELEMENTS` similarities
    merges the full top-k of its negatives into the running top-k; then each step of
    :data:`FILTER_ELEMENTS` merges only its entries above the running ``k``-th largest, found by
    :func:`indices_above` (those at or below it can be neither kept nor above the final
    threshold, which only rises), less the same-identity ones."""
    n = labels.numel()
    values, rows = embeddings.new_empty(0), torch.empty(0, dtype=torch.long)
    buffer = embeddings.new_empty(min(block_size, n), n)
    topk_rows, filter_rows = max(1, TOPK_ELEMENTS // n), max(1, FILTER_ELEMENTS // n)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        similarity = torch.mm(embeddings[start:stop], embeddings.T, out=buffer[: stop - start])
        offset = 0
        while offset < stop - start:
            full = values.numel() < k
            step = topk_rows if full else filter_rows
            part = similarity[offset: offset + step].reshape(-1)  # contiguous rows: a view
            first = start + offset
            offset += step
            if full:
                same = labels[first: first + part.numel() // n].unsqueeze(1) == labels.unsqueeze(0)
                top, index = part.masked_fill(same.reshape(-1), -math.inf).topk(min(k, part.numel()))
                index = index[top > -math.inf]
            else:
                index = indices_above(part, values[-1])
                index = index[labels[first + index // n] != labels[index % n]]
            if index.numel() == 0:
                continue
            values, rows = torch.cat([values, part[index]]), torch.cat([rows, first + index // n])
            order = values.topk(k).indices if values.numel() > k else values.argsort(descending=True)
            values, rows = values[order], rows[order]
    return values, rows


def positive_counts(embeddings: Tensor, labels: Tensor, threshold: float, block_size: int) -> Tensor:
    """``tp_i``: the other images of image ``i``'s identity with ``s_ij > threshold``, from each
    identity's Gram matrix (identities of one size batched; at most ``block_size * N``
    similarities at a time)."""
    n = labels.numel()
    sizes = torch.bincount(labels)
    order = torch.argsort(labels, stable=True)
    starts = sizes.cumsum(0) - sizes
    tp = torch.zeros(n, dtype=torch.long)
    budget = block_size * n
    for size in torch.unique(sizes).tolist():
        if size < 2:
            continue
        members = order[starts[sizes == size].unsqueeze(1) + torch.arange(size)]  # (identities, size)
        rows_at_once = max(1, min(size, budget // size))
        for chunk in members.split(max(1, budget // (size * size))):
            images = embeddings[chunk]
            for low in range(0, size, rows_at_once):
                high = min(size, low + rows_at_once)
                similarity = torch.bmm(images[:, low:high], images.transpose(1, 2))
                diagonal = torch.arange(high - low)
                similarity[:, diagonal, low + diagonal] = -math.inf  # the self-match
                tp[chunk[:, low:high]] = (similarity > threshold).sum(-1)
    return tp


def counts_at_fpr(embeddings: Tensor, labels: Tensor, fpr: float, block_size: int) -> OperatingPoint:
    """The threshold at ``fpr`` over ordered negatives (the exact ``k``-th largest) and every
    image's counts at it, in one GEMM pass over ``S`` (threshold nan without negatives);
    ``labels`` are non-negative identity ids."""
    n = labels.numel()
    sizes = torch.bincount(labels)
    partners = sizes[labels]  # images of each image's identity, itself included
    negatives = negative_pairs(sizes)
    if negatives <= 0:
        zeros = torch.zeros(n, dtype=torch.long)
        return OperatingPoint(float("nan"), zeros, partners - 1, zeros.clone(), zeros.clone())
    k = max(1, math.ceil(fpr * negatives))
    values, rows = largest_negatives(embeddings, labels, k, block_size)
    threshold = values[k - 1]
    fp = torch.bincount(rows[values > threshold], minlength=n)
    tp = positive_counts(embeddings, labels, float(threshold), block_size)
    return OperatingPoint(float(threshold), tp, partners - 1 - tp, fp, n - partners - fp)


def operating_point(state: EmbeddingSet) -> OperatingPoint:
    """The operating point of an evaluation at ``state.params.fpr`` (computed once, then cached)."""
    key = ("operating_point", state.params.fpr, state.params.block_size)
    if key not in state.cache:
        embeddings = state.embeddings.float()
        state.cache[key] = counts_at_fpr(embeddings, state.identities, state.params.fpr, state.params.block_size)
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
