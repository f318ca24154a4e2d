"""Similarity distributions of face embeddings: the soft histogram, its entropy / KL / order
losses, and the online mining of the negative and positive pairs they are estimated from.

These are the shared parts of two multi-branch methods: the FairFace challenge solution
(CdtQin/FairFace, 3rd place of the ECCV 2020 ChaLearn FairFaceRec challenge, :mod:`.multibranch`)
and the Distribution Distillation Loss (Huang et al., "Improving Face Recognition from Hard
Samples via Distribution Distillation Loss", ECCV 2020, arXiv 2002.03662, :mod:`.ddl`). Both
describe a data branch by the distribution of the cosine similarities of its positive pairs (two
images of one identity) and of its negative pairs (two identities), estimated differentiably:

* **Soft histogram** over bins ``b in {0, step, 2 step, ..., 1 - step}`` (challenge: step 0.01,
  100 bins; DDL: 0.001, 1000 bins) with a Gaussian kernel of width ``sigma`` (0.1 in both)::

      p_b = sum_i exp(-0.5 ((s_i - b) / sigma)^2) / sum_b' sum_i exp(-0.5 ((s_i - b') / sigma)^2)

  Each similarity spreads its mass over the bins near it, so gradients flow from ``p`` back to
  the similarities and to the embeddings. Similarities below 0 put their mass on the lowest bins
  (the bins cover [0, 1) only, as in both originals).
* **Entropy** ``H(p) = -sum_b p_b log(p_b + 1e-9)`` (challenge: weight 0.01 on each branch's
  positive and negative distribution; minimising it sharpens the distributions).
* **KL divergence** ``KL(p || q) = sum_b (p_b + 1e-9) (log(p_b + 1e-9) - log(q_b + 1e-9))``
  (the challenge's and TFace's ``F.kl_div(log(q + 1e-9), p + 1e-9)`` formula; the challenge adds
  one more 1e-9 inside its log, a difference below float precision).
* **Order loss** ``mean(negative similarities) - mean(positive similarities)``: pushes the
  negatives below the positives.

Mining, on the L2-normalised embeddings of one branch of a batch (``S = E E^T``):

* :func:`top_negatives`: the challenge's negatives, the ``k`` (100) largest similarities between
  images of different identities. The challenge flattened the full symmetric matrix (masked
  entries set to -1), so its top 100 held every pair twice, about 50 unique pairs, and, in a
  batch with fewer than 100 negative pairs, masked -1 entries. We take the ``k`` largest of the
  *upper triangle* (``i < j``): ``k`` unique pairs, never a masked entry (fewer when the batch has
  fewer than ``k`` negative pairs). ``top_k = 50`` matches the challenge's number of unique pairs.
* :func:`hardest_negatives`: DDL's negatives, one per row: ``max_{j > i} S_ij``. TFace took the
  row maximum of ``triu(S, 1)`` with no label mask, relying on a sampler that puts one image of
  each identity in a batch; its zeroed lower triangle also gave the last row (and every row whose
  similarities are all negative) a spurious 0. We mask the pairs of one identity instead (our
  batches hold several images of each identity, which is where the positives come from) and drop
  the rows with no candidate.
* :func:`positive_similarities`: the similarities of the pairs of one identity (``i < j``) in the
  batch, leaving out two copies of one image (same dataset row: a batch may repeat an image).
* :func:`keep_below` (challenge: hard positives with cosine < 0.6, all of them when none
  qualifies) and :func:`keep_above` (DDL: positives with cosine above its threshold).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-9


def histogram_bins(step: float, device: torch.device | str | None = None) -> Tensor:
    """The bin centres ``{0, step, ..., 1 - step}`` (``round(1 / step)`` of them)."""
    count = max(1, round(1 / step))
    return torch.arange(count, dtype=torch.float32, device=device) * step


def soft_histogram(similarities: Tensor, bins: Tensor, sigma: float) -> Tensor:
    """The Gaussian-kernel histogram ``p`` ``(len(bins),)`` of ``similarities`` ``(n,)``, summing to 1.

    ``similarities`` must not be empty (the distribution of nothing is undefined)."""
    if similarities.numel() == 0:
        raise ValueError("the soft histogram of an empty set of similarities is undefined")
    distances = (similarities.reshape(-1, 1).float() - bins.reshape(1, -1)) / sigma
    mass = torch.exp(-0.5 * distances.square()).sum(0)
    return mass / mass.sum()


def entropy(p: Tensor) -> Tensor:
    """``H(p) = -sum p log(p + 1e-9)``."""
    return -(p * torch.log(p + EPS)).sum()


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q) = sum (p + 1e-9) (log(p + 1e-9) - log(q + 1e-9))``."""
    return ((p + EPS) * (torch.log(p + EPS) - torch.log(q + EPS))).sum()


def order_loss(negatives: Tensor, positives: Tensor) -> Tensor:
    """``mean(negatives) - mean(positives)``."""
    return negatives.mean() - positives.mean()


def _pair_masks(identities: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(different, same)`` ``(n, n)`` masks of the upper triangle ``i < j``: pairs of two
    identities, and pairs of one identity that are not two copies of one dataset row."""
    n = identities.numel()
    upper = torch.ones(n, n, dtype=torch.bool, device=identities.device).triu(1)
    same_identity = identities.view(-1, 1) == identities.view(1, -1)
    same = upper & same_identity
    if index is not None:
        same &= index.view(-1, 1) != index.view(1, -1)
    return upper & ~same_identity, same


def top_negatives(similarity: Tensor, identities: Tensor, k: int) -> Tensor:
    """The ``k`` largest similarities of the unique pairs ``i < j`` of different identities
    (all of them, sorted, when there are fewer than ``k``)."""
    different, _ = _pair_masks(identities, None)
    values = similarity[different]
    return values.topk(min(k, values.numel())).values


def hardest_negatives(similarity: Tensor, identities: Tensor) -> Tensor:
    """Per row ``i``, ``max_{j > i, identity_j != identity_i} S_ij``; rows without such a ``j``
    are left out."""
    different, _ = _pair_masks(identities, None)
    masked = similarity.masked_fill(~different, float("-inf"))
    has_candidate = different.any(1)
    return masked[has_candidate].max(1).values


def positive_similarities(similarity: Tensor, identities: Tensor, index: Tensor | None = None) -> Tensor:
    """Similarities of the pairs ``i < j`` of one identity (not two copies of one ``index``)."""
    _, same = _pair_masks(identities, index)
    return similarity[same]


def keep_below(similarities: Tensor, threshold: float) -> Tensor:
    """The similarities below ``threshold`` (the hard positives); all of them if none is."""
    kept = similarities[similarities < threshold]
    return kept if kept.numel() else similarities


def keep_above(similarities: Tensor, threshold: float) -> Tensor:
    """The similarities above ``threshold`` (possibly none)."""
    return similarities[similarities > threshold]
