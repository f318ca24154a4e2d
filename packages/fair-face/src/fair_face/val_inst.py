"""MixFairFace's instance-level verification protocol (``val-inst``), block-wise.

MixFairFace (Wang et al., "MixFairFace: Towards Ultimate Fairness via MixFair Adapter in Face
Recognition", AAAI 2023) judges fairness between *identities*, not only between races: every
evaluated image is compared with every other one (RFW: ~40,000 images, 1.6e9 ordered pairs).

* ``s_ij = e_i . e_j`` of the L2-normalised (flip-summed) embeddings; an ordered pair ``(i, j)``,
  ``i != j``, is positive when both images show the same identity, negative otherwise.
* One global threshold ``t`` for FPR = 1e-5 over the ordered negative pairs: the ``k``-th largest
  negative similarity, ``k = max(1, ceil(1e-5 * n_neg))``; a pair is accepted when ``s_ij > t``.
* Per image: ``TPR_i = tp_i / (tp_i + fn_i)`` over its positives, the self-match removed (the
  paper's ``(tp_i - 1) / (tp_i - 1 + fn_i)`` with the self-match counted), and
  ``FPR_i = fp_i / (fp_i + tn_i)`` over its negatives.
* Per identity: the mean of its images' rates. The fairness scores are the standard deviations
  (ddof 0) of the per-identity TPR and FPR over the identities (lower is fairer); also their means,
  and per race (the race of an identity is the group of its first image) the mean and std of the
  per-identity TPR and the mean per-identity FPR.
* Diagnostics: intra-identity similarity, the cosine of each image to its identity's normalised
  mean embedding, averaged over the identity's images, then over identities; inter-identity
  similarity, the mean of each identity's 50 largest cosines to the other identities' normalised
  means (over all races together), averaged over identities.

What differs from the original code, and why:

* Threshold: the original bisects on [-1, 1] until 1e-5 < FPR < 1.1e-5 (70 iterations at most,
  then it silently keeps the last midpoint); here it is exact: the ``k``-th largest negative,
  kept as a streaming top-k over blocks of rows of ``S = F F^T``.
* Memory: the original holds dense ``N x N`` similarity and ground-truth matrices (~60 GB for RFW).
  Here ``S`` is computed ``block_size`` rows at a time (``eval.params.block_size``) and the
  ground truth comes from identity ids, so memory is ``O(N * block_size)``. One GEMM pass over
  ``S`` does all the work: the top-k keeps the row of each kept negative, and the negatives
  above ``t`` are exactly the kept ones above ``t`` (fewer than ``k``), which gives every
  ``fp_i``; the positives are counted from each identity's own small Gram matrix.
* Single-image identities have no positive pair (TPR 0/0): the original keeps their NaN, so its
  TPR std is NaN. They are excluded from the per-identity rates and from the intra-identity
  similarity (where they would count a trivial 1), and counted (``inst_excluded``). Their mean
  embedding still takes part in the inter-identity similarity, which is defined for them.
* Inter-identity similarity: the original ranks the identity's own similarity (set to -1) among
  the candidates, which matters with 50 identities or fewer; here it is excluded (top
  ``min(50, I - 1)``).

The protocol's FPR is ``eval.params.instance_fpr`` (default 1e-5, as the paper), apart from
``eval.params.fpr``, the operating point of the group metrics: at 1e-5 a set needs about 10^5
negative pairs (~320 images) for the threshold to be more than the largest impostor. The
rates are NaN when the images have no negative pair (one identity). The task gathers the embeddings
of all processes once; these metrics run on that gathered set and share one computation through
``state.cache``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fair_core.metrics import Metric
from fair_core.tasks import EmbeddingSet

from .operating_point import counts_at_fpr

#: The paper's false-positive rate over ordered negative pairs (``eval.params.instance_fpr``'s default).
VAL_INST_FPR = 1e-5
#: Nearest other identities averaged by the inter-identity similarity.
INTER_TOP_K = 50
NAN = float("nan")


def identity_means(embeddings: Tensor, labels: Tensor, num_identities: int) -> Tensor:
    """The L2-normalised mean embedding of each identity ``(I, D)``."""
    sums = embeddings.new_zeros(num_identities, embeddings.shape[1]).index_add_(0, labels, embeddings)
    return F.normalize(sums, dim=1)


def inter_identity_similarity(means: Tensor, top_k: int = INTER_TOP_K, block_size: int = 4096) -> Tensor:
    """Each identity's mean cosine to its ``min(top_k, I - 1)`` most similar other identities
    ``(I,)`` (nan with one identity), block-wise over rows of ``M M^T``."""
    count = means.shape[0]
    result = torch.full((count,), NAN, dtype=torch.float64)
    k = min(top_k, count - 1)
    if k < 1:
        return result
    for start in range(0, count, block_size):
        stop = min(start + block_size, count)
        similarity = (means[start:stop] @ means.T).clamp_(-1, 1)
        rows = torch.arange(stop - start)
        similarity[rows, start + rows] = -math.inf
        result[start:stop] = similarity.topk(k, dim=1).values.double().mean(1)
    return result


@dataclass(frozen=True)
class InstanceRates:
    """The protocol's per-identity results (identities in sorted id order)."""

    threshold: float
    identity_tpr: Tensor  # (I,) float64; nan for excluded identities
    identity_fpr: Tensor  # (I,) float64; nan for excluded identities
    identity_group: Tensor  # (I,) the group of each identity's first image
    kept: Tensor  # (I,) bool: identities with at least 2 images
    intra_similarity: Tensor  # (I,) float64; nan for excluded identities
    inter_similarity: Tensor  # (I,) float64

    @property
    def excluded(self) -> int:
        return int((~self.kept).sum())


def instance_rates(embeddings: Tensor, identities: Tensor, groups: Tensor, fpr: float = VAL_INST_FPR,
                   block_size: int = 4096) -> InstanceRates:
    """The protocol on L2-normalised ``embeddings`` ``(N, D)`` with their identities and groups."""
    _, labels = torch.unique(identities, return_inverse=True)
    num_identities = int(labels.max()) + 1 if labels.numel() else 0
    sizes = torch.bincount(labels, minlength=num_identities)
    kept = sizes >= 2
    point = counts_at_fpr(embeddings, labels, fpr, block_size)

    def per_identity(values: Tensor) -> Tensor:
        sums = torch.zeros(num_identities, dtype=torch.float64).index_add_(0, labels, values.double())
        return torch.where(kept, sums / sizes.clamp_min(1), torch.full_like(sums, NAN))

    if math.isnan(point.threshold):
        identity_tpr = identity_fpr = torch.full((num_identities,), NAN, dtype=torch.float64)
    else:
        identity_tpr = per_identity(point.tp.double() / (point.tp + point.fn).clamp_min(1))
        identity_fpr = per_identity(point.fp.double() / (point.fp + point.tn).clamp_min(1))
    positions = torch.arange(labels.numel())
    first = torch.full((num_identities,), labels.numel(), dtype=torch.long).scatter_reduce_(0, labels, positions, "amin")
    means = identity_means(embeddings, labels, num_identities)
    intra = per_identity((embeddings * means[labels]).sum(1).clamp(-1, 1))
    return InstanceRates(point.threshold, identity_tpr, identity_fpr, groups[first], kept, intra,
                         inter_identity_similarity(means, INTER_TOP_K, block_size))


def val_inst(state: EmbeddingSet) -> InstanceRates:
    """The protocol on an evaluation at ``eval.params.instance_fpr`` (computed once, then cached)."""
    key = ("rfw_val_inst", state.params.instance_fpr, state.params.block_size)
    if key not in state.cache:
        embeddings = state.embeddings if state.embeddings.dtype == torch.float64 else state.embeddings.float()
        state.cache[key] = instance_rates(embeddings, state.identities, state.groups, state.params.instance_fpr,
                                          state.params.block_size)
    return state.cache[key]


def _kept(values: Tensor, rates: InstanceRates, mask: Tensor | None = None) -> Tensor:
    return values[rates.kept if mask is None else rates.kept & mask]


def _mean(values: Tensor) -> Tensor:
    return values.mean() if values.numel() else torch.tensor(NAN, dtype=torch.float64)


def _std(values: Tensor) -> Tensor:
    return values.std(correction=0) if values.numel() else torch.tensor(NAN, dtype=torch.float64)


def tpr_std(state: EmbeddingSet) -> Tensor:
    """Std (ddof 0) over identities of the per-identity TPR."""
    rates = val_inst(state)
    return _std(_kept(rates.identity_tpr, rates))


def fpr_std(state: EmbeddingSet) -> Tensor:
    """Std (ddof 0) over identities of the per-identity FPR."""
    rates = val_inst(state)
    return _std(_kept(rates.identity_fpr, rates))


def tpr_mean(state: EmbeddingSet) -> Tensor:
    """Mean over identities of the per-identity TPR."""
    rates = val_inst(state)
    return _mean(_kept(rates.identity_tpr, rates))


def fpr_mean(state: EmbeddingSet) -> Tensor:
    """Mean over identities of the per-identity FPR."""
    rates = val_inst(state)
    return _mean(_kept(rates.identity_fpr, rates))


def excluded_identities(state: EmbeddingSet) -> Tensor:
    """Identities left out of the per-identity statistics (a single image)."""
    return torch.tensor(float(val_inst(state).excluded))


def intra_similarity(state: EmbeddingSet) -> Tensor:
    """Mean over identities of the images' cosine to their identity's mean embedding."""
    rates = val_inst(state)
    return _mean(_kept(rates.intra_similarity, rates))


def inter_similarity(state: EmbeddingSet) -> Tensor:
    """Mean over identities of their 50 largest cosines to other identities' mean embeddings."""
    return _mean(val_inst(state).inter_similarity)


def _per_group(state: EmbeddingSet, field: str, statistic) -> Tensor:
    rates = val_inst(state)
    values = getattr(rates, field)
    return torch.tensor([float(statistic(_kept(values, rates, rates.identity_group == g))) for g in range(state.num_groups)],
                        dtype=torch.float64)


def group_tpr_mean(state: EmbeddingSet) -> Tensor:
    """Mean per-identity TPR of each race's identities ``(G,)``."""
    return _per_group(state, "identity_tpr", _mean)


def group_tpr_std(state: EmbeddingSet) -> Tensor:
    """Std (ddof 0) of the per-identity TPR of each race's identities ``(G,)``."""
    return _per_group(state, "identity_tpr", _std)


def group_fpr_mean(state: EmbeddingSet) -> Tensor:
    """Mean per-identity FPR of each race's identities ``(G,)``."""
    return _per_group(state, "identity_fpr", _mean)


VAL_INST_METRICS = tuple(
    Metric(name, compute, section, higher, description, task="verification", column=column)
    for name, compute, section, higher, description, column in (
        ("inst_tpr_std", tpr_std, "fairness", False, "instance protocol: std over identities of the per-identity TPR "
                                                   "at FPR 1e-5", None),
        ("inst_fpr_std", fpr_std, "fairness", False, "instance protocol: std over identities of the per-identity FPR "
                                                   "at FPR 1e-5", None),
        ("inst_tpr_mean", tpr_mean, "overall", True, "instance protocol: mean per-identity TPR at FPR 1e-5", None),
        ("inst_fpr_mean", fpr_mean, "overall", False, "instance protocol: mean per-identity FPR at FPR 1e-5", None),
        ("inst_excluded", excluded_identities, "overall", False, "instance protocol: identities with a single image, "
                                                               "left out", None),
        ("inst_intra_sim", intra_similarity, "overall", True, "instance protocol: mean cosine of images to their "
                                                            "identity's mean embedding", None),
        ("inst_inter_sim", inter_similarity, "overall", False, "instance protocol: mean of the 50 largest cosines "
                                                             "between identity means", None),
        ("inst_group_tpr", group_tpr_mean, "groups", True, "instance protocol: mean per-identity TPR of each race",
         "inst_tpr"),
        ("inst_group_tpr_std", group_tpr_std, "groups", False, "instance protocol: std of the per-identity TPR of "
                                                             "each race", "inst_tpr_std"),
        ("inst_group_fpr", group_fpr_mean, "groups", False, "instance protocol: mean per-identity FPR of each race",
         "inst_fpr"),
    )
)
