"""``multibranch``: the FairFace challenge solution (CdtQin/FairFace, 3rd place of the ECCV 2020
ChaLearn Fair Face Recognition challenge), and the data branches it shares with ``ddl``.

**Branches.** The protected groups of the run are split into branches (``branches``: lists of
group names, e.g. ``[["A"], ["B", "C"]]``; default: one branch per group); an image belongs to
the branch of its group. The challenge's branches were data sets of one skin tone and gender
(bright_male, bright_female, dark_male, dark_female, and extra under-represented ones).

**Batches.** Distributions need positive pairs in every batch and every branch, so an epoch is
ordered (``TrainingData.epoch_order``) as runs of ``images_per_identity`` (K) images of one
identity (an identity with fewer than K images, or a last run short of K, is filled with
repeats of its images); with ``balance_branches`` the runs come from the branches in turn, so a
batch of P x K images holds P / (number of branches) identities of each branch (the challenge and
DDL read each branch from its own loader with its own batch size). Branches smaller than the
others are therefore repeated within an epoch, larger ones partly left out (drawn afresh each
epoch). The batch size should be a multiple of K (times the number of branches).

**Classification.** One cosine classifier per branch over that branch's identities: ArcFace
(Deng et al., CVPR 2019) with ``s = 64``, ``m = 0.5`` and the fallback ``s (cos theta - m sin m)``
past ``cos(pi - m)``. The classifiers are the rows of one ``(C, D)`` weight matrix over all
training identities: branch ``b``'s classifier is the rows of its identities, and its softmax
runs over those identities only (a map global identity -> branch-local index), which is the
challenge's separate classifiers when, as there, no identity appears in two branches (one that
does shares its row). The model's output is thus the same for any training data, so a saved model
reloads from its config alone. Loss: the sum over branches of the mean cross-entropy of the
branch's images, plus the classifier L2 ``0.001 sum(W^2) / 2`` (TensorFlow's ``l2_loss``).

**Distributions** (:mod:`.distribution`), per branch, on the L2-normalised embeddings
(``model.features``) of the branch's images in the batch, ``S = E E^T``:

* negatives: the ``top_k`` (100) largest similarities of pairs of different identities, over
  the *upper triangle* (``top_k`` unique pairs; the challenge took the top 100 of the flattened
  symmetric matrix, about 50 unique pairs each counted twice: ``top_k = 50`` matches it);
* positives: the pairs of one identity in the batch (the challenge read offline-mined pairs from
  separate pair branches; an offline pairs file is NOT implemented here), kept if their cosine
  is below ``pos_max_similarity`` (0.6; all of them if none is);
* soft histograms over bins ``{0, 0.01, ..., 0.99}`` with ``sigma = 0.1``.

**Losses** (the challenge's weights):

* entropy ``0.01 H(p)`` of each branch's positive and of its negative distribution. FIXED: the
  challenge's extra branches added the entropy of a stale variable (the last main branch's
  negative distribution, left over from an earlier loop) instead of their own; here every branch
  contributes the entropy of its own distributions;
* KL ``0.1 (KL(p_a^- || p_b^-) + KL(p_a^+ || p_b^+))`` for each listed branch pair ``(a, b)``
  (``kl_pairs``; default: every pair ``a < b``. The challenge listed (0,2), (1,3), (0,1), (2,3)
  over [bright_male, bright_female, dark_male, dark_female]: skin tone within gender, gender
  within skin tone); neither side is detached, as in the challenge;
* order ``0.1 (mean(top negatives) - mean(positives))`` per branch.

A term whose similarities are missing from a batch (a branch with one identity has no negative,
one without two images of an identity no positive) is left out of that step. The challenge
gathered the embeddings of all workers before these losses; here each process uses its own batch.
Not reproduced: the challenge's initialisation of the classifier rows from the identities' mean
features (it needs a pretrained backbone), and its ResNet-101-like backbone (any fair-face model).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fair_core import FairDataset, FairError, Method, TrainingData
from fair_core.untrusted import quote

from . import distribution as D
from .margins import HeadKind, MarginHead, MarginParams, SoftmaxHead, build_margin_head

# ----------------------------------------------------------------------------- branches
GroupList = Annotated[list[str], Field(min_length=1)]


class BranchParams(MarginParams):
    """What the multi-branch methods share: the branches, the batch order, the histogram and the
    identity head (:class:`~fair_face.margins.MarginParams`)."""

    branches: list[GroupList] | None = Field(
        None, min_length=1, description="lists of protected group names of the run, one list per branch "
                                        "(e.g. [[\"A\"], [\"B\", \"C\"]]); default: one branch per group")
    images_per_identity: int = Field(2, ge=2, le=64, description="K: consecutive images of one identity in a batch "
                                                                 "(batches of P identities x K images)")
    balance_branches: bool = Field(True, description="take the identities of a batch from the branches in turn "
                                                     "(equal identities per branch and batch)")
    bin_step: float = Field(0.01, gt=0, le=0.5, description="spacing of the histogram bins {0, step, ..., 1 - step}")
    sigma: float = Field(0.1, gt=0, le=1, description="width of the Gaussian kernel of the soft histogram")


@dataclass(frozen=True)
class Branches:
    """The branches of a run: their names (``"B+C"``) and the branch of every protected group."""

    names: tuple[str, ...]
    of_group: Tensor  # (G,) long

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def resolve(cls, branches: list[list[str]] | None, group_names: tuple[str, ...]) -> Branches:
        """Check ``branches`` against the run's groups: each group in exactly one branch; a
        one-line :class:`FairError` naming ``method.params.branches`` otherwise."""
        if branches is None:
            return cls(tuple(group_names), torch.arange(len(group_names)))
        known = ", ".join(group_names)
        of_group = torch.full((len(group_names),), -1, dtype=torch.long)
        for b, groups in enumerate(branches):
            for group in groups:
                if group not in group_names:
                    raise FairError(f"method.params.branches: unknown group {quote(group)} in branch {b}; "
                                    f"the run's groups: {known}")
                g = group_names.index(group)
                if of_group[g] >= 0:
                    where = f"twice in branch {b}" if of_group[g] == b else f"in branch {int(of_group[g])} and branch {b}"
                    raise FairError(f"method.params.branches: group {quote(group)} is {where}; each group belongs "
                                    f"to exactly one branch")
                of_group[g] = b
        missing = [name for name, b in zip(group_names, of_group.tolist(), strict=True) if b < 0]
        if missing:
            raise FairError(f"method.params.branches: group(s) {', '.join(missing)} in no branch; every group of "
                            f"the run ({known}) must be in one")
        return cls(tuple("+".join(groups) for groups in branches), of_group)


def identity_batch_order(identities: Tensor, branches: Tensor, images_per_identity: int, num_branches: int,
                         balance: bool, generator: torch.Generator) -> Tensor:
    """An epoch's positions (as many as ``identities``) in runs of ``images_per_identity`` (K)
    positions of one (branch, identity) cell, drawn with ``generator``.

    Each cell's positions are shuffled and cut into runs of K, the last one (and a cell with
    fewer than K images) filled with positions of the cell drawn at random. Without ``balance``
    the runs are shuffled; with it, runs are taken from the branches in turn (each branch's runs
    shuffled, reshuffled and repeated when they run out), then the order is cut to its length."""
    n, k = identities.numel(), images_per_identity
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    cell = branches.long() * (int(identities.max()) + 1) + identities.long()
    shuffled = torch.randperm(n, generator=generator)
    positions = shuffled[torch.sort(cell[shuffled], stable=True).indices]  # grouped by cell, random within
    _, counts = torch.unique_consecutive(cell[positions], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    runs = (counts + k - 1) // k
    slots = runs * k
    cell_of_slot = torch.repeat_interleave(torch.arange(counts.numel()), slots)
    slot = torch.arange(int(slots.sum())) - torch.repeat_interleave(torch.cumsum(slots, 0) - slots, slots)
    filler = (torch.rand(slot.numel(), generator=generator) * counts[cell_of_slot]).long()
    offset = torch.where(slot < counts[cell_of_slot], slot, filler)
    chunks = positions[starts[cell_of_slot] + offset].view(-1, k)  # (runs, K)
    chunk_branch = branches[positions[starts]].long().repeat_interleave(runs)
    needed = math.ceil(n / k)
    if not balance:
        order = torch.randperm(chunks.shape[0], generator=generator)[:needed]
    else:
        per_branch = math.ceil(needed / num_branches)
        streams = []
        for b in range(num_branches):
            own = (chunk_branch == b).nonzero().flatten()
            if own.numel() == 0:
                raise ValueError(f"branch {b} has no images")
            repeats = math.ceil(per_branch / own.numel())
            draws = torch.cat([own[torch.randperm(own.numel(), generator=generator)] for _ in range(repeats)])
            streams.append(draws[:per_branch])
        order = torch.stack(streams, 1).reshape(-1)[:needed]  # branch 0, 1, ..., 0, 1, ...
    return chunks[order].reshape(-1)[:n]


def classifier_weight(head: MarginHead) -> Tensor:
    """The class weight matrix ``(C, D)`` of a margin head."""
    return head.linear.weight if isinstance(head, SoftmaxHead) else head.weight


class BranchMethod(Method):
    """Base of the multi-branch methods: branches, P x K branch-balanced batches, the margin head
    over all identities, and the per-branch similarity matrices of a batch."""

    Params = BranchParams
    tasks = ("verification",)

    def __init__(self, params: BranchParams, info, task=None):
        super().__init__(params, info, task)
        self.branches = Branches.resolve(params.branches, info.group_names)
        self.check_params()
        self.head: MarginHead | None = None
        self.bins: Tensor | None = None

    def check_params(self) -> None:
        """Checks of the parameters against the branches (subclasses)."""

    # ------------------------------------------------------------------ data
    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        branch = self.branches.of_group[train_set.groups]
        present = torch.bincount(branch, minlength=len(self.branches))
        empty = [name for name, count in zip(self.branches.names, present.tolist(), strict=True) if count == 0]
        if empty:
            raise FairError(f"method.params.branches: branch(es) {', '.join(empty)} have no training images; "
                            f"group the empty group(s) with another branch")
        self.branch_identities = self._branch_identities(train_set.targets, branch)
        order = functools.partial(identity_batch_order, train_set.targets, branch, self.params.images_per_identity,
                                  len(self.branches), self.params.balance_branches)
        return TrainingData(train_set, epoch_order=order)

    def _branch_identities(self, identities: Tensor, branch: Tensor) -> Tensor:
        """``local[b, c]``: the index of identity ``c`` among branch ``b``'s identities (-1: not in it)."""
        present = torch.zeros(len(self.branches), self.info.num_classes, dtype=torch.bool)
        present[branch, identities] = True
        return torch.where(present, present.long().cumsum(1) - 1, -1)

    # ------------------------------------------------------------------ model
    def build_model(self, backbone: nn.Module) -> nn.Module:
        backbone.head = build_margin_head(self.params, backbone.feature_dim, self.info.num_classes)
        self.head = backbone.head  # its logits() holds no weights: safe to call outside DDP's forward
        return backbone

    def forward(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(scores (N, C), L2-normalised embeddings (N, D))``, through the model's forward."""
        scores, features = model(batch["image"], with_features=True)
        return scores, F.normalize(features.float(), dim=1)

    def local_identities(self, device: torch.device) -> Tensor:
        """:attr:`branch_identities` on ``device`` (copied once)."""
        if self.branch_identities.device != device:
            self.branch_identities = self.branch_identities.to(device)
        return self.branch_identities

    def histogram(self, similarities: Tensor) -> Tensor:
        if self.bins is None or self.bins.device != similarities.device:
            self.bins = D.histogram_bins(self.params.bin_step, similarities.device)
        return D.soft_histogram(similarities, self.bins, self.params.sigma)

    def branch_batches(self, embeddings: Tensor, batch: dict[str, Tensor]):
        """Per branch present in the batch: ``(b, rows, S_b, identities_b, index_b)``."""
        branch = self.branches.of_group.to(embeddings.device)[batch["group"]]
        for b in range(len(self.branches)):
            rows = (branch == b).nonzero().flatten()
            if rows.numel():
                e = embeddings[rows]
                yield b, rows, e @ e.T, batch["identity"][rows], batch["index"][rows]

    def training_step(self, model: nn.Module, batch: dict[str, Tensor], trainer) -> dict:
        parts = self.losses(model, batch)
        loss = sum(parts.values())
        trainer.step(loss)
        return {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return sum(self.losses(model, batch).values())

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted loss terms of one batch (their sum is the loss)."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- the challenge
class MultiBranchParams(BranchParams):
    head: HeadKind = Field("arcface", description="identity head of every branch: arcface (the challenge's), "
                                                  "cosface or softmax")
    m: float = Field(0.5, ge=0, lt=1.5, description="margin (ArcFace: on the angle in radians; CosFace: on the cosine)")
    top_k: int = Field(100, ge=1, description="online negatives per branch: the largest similarities of unique "
                                              "pairs of different identities (the challenge's 100 held ~50 unique)")
    pos_max_similarity: float = Field(0.6, gt=-1, le=1, description="positives kept if their cosine is below it "
                                                                    "(all of them when none is)")
    entropy_weight: float = Field(0.01, ge=0, description="weight of the entropy of each distribution")
    kl_weight: float = Field(0.1, ge=0, description="weight of KL(p_a || p_b) of each listed branch pair")
    order_weight: float = Field(0.1, ge=0, description="weight of mean(negatives) - mean(positives) of each branch")
    classifier_l2: float = Field(0.001, ge=0, description="L2 of the classifier weights: weight * sum(w^2) / 2")
    kl_pairs: list[tuple[int, int]] | None = Field(
        None, description="branch index pairs (a, b) whose distributions KL(p_a || p_b) aligns; default: every pair a < b")


@dataclass
class BranchDistributions:
    """The mined similarities of one branch in a batch and their histograms (None when missing)."""

    negatives: Tensor | None
    positives: Tensor | None
    p_negative: Tensor | None
    p_positive: Tensor | None


def multibranch_losses(scores: Tensor, embeddings: Tensor, batch: dict[str, Tensor], method: MultiBranch) -> dict[str, Tensor]:
    """The challenge's loss terms on one batch, weighted: ``classification`` (sum over branches of
    the margin cross-entropy over the branch's identities), ``classifier_l2``, ``entropy``, ``kl``,
    ``order``."""
    p, head = method.params, method.head
    zero = embeddings.sum() * 0
    classification, entropy, order = zero, zero, zero
    distributions: dict[int, BranchDistributions] = {}
    local = method.local_identities(scores.device)
    for b, rows, similarity, identities, index in method.branch_batches(embeddings, batch):
        columns = (local[b] >= 0).nonzero().flatten()
        labels = local[b, identities]
        branch_scores = scores[rows][:, columns]
        classification = classification + F.cross_entropy(head.logits(branch_scores, labels), labels)
        negatives = D.top_negatives(similarity, identities, p.top_k)
        positives = D.positive_similarities(similarity, identities, index)
        negatives = negatives if negatives.numel() else None
        positives = D.keep_below(positives, p.pos_max_similarity) if positives.numel() else None
        found = BranchDistributions(negatives, positives, None if negatives is None else method.histogram(negatives),
                                    None if positives is None else method.histogram(positives))
        distributions[b] = found
        for q in (found.p_negative, found.p_positive):
            if q is not None:
                entropy = entropy + D.entropy(q)
        if negatives is not None and positives is not None:
            order = order + D.order_loss(negatives, positives)
    kl = zero
    for a, b in method.kl_pairs:
        if a in distributions and b in distributions:
            first, second = distributions[a], distributions[b]
            for q_a, q_b in ((first.p_negative, second.p_negative), (first.p_positive, second.p_positive)):
                if q_a is not None and q_b is not None:
                    kl = kl + D.kl_divergence(q_a, q_b)
    weight = classifier_weight(head)
    return {"classification": classification, "classifier_l2": p.classifier_l2 * weight.float().square().sum() / 2,
            "entropy": p.entropy_weight * entropy, "kl": p.kl_weight * kl, "order": p.order_weight * order}


class MultiBranch(BranchMethod):
    """One ArcFace classifier per branch, plus entropy, KL and order losses on the branches'
    similarity distributions (the FairFace challenge solution)."""

    Params = MultiBranchParams
    description = "FairFace challenge solution: per-branch ArcFace classifiers + entropy/KL/order losses on similarity distributions"
    paper = "CdtQin/FairFace, ECCV 2020 ChaLearn Fair Face Recognition challenge (3rd place)"

    def check_params(self) -> None:
        count = len(self.branches)
        pairs = self.params.kl_pairs
        if pairs is None:
            pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
        for a, b in pairs:
            if not (0 <= a < count and 0 <= b < count) or a == b:
                raise FairError(f"method.params.kl_pairs: ({a}, {b}) is not a pair of two of the {count} branches "
                                f"(indices 0 to {count - 1}: {', '.join(self.branches.names)})")
        self.kl_pairs = [tuple(pair) for pair in pairs]

    def losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        scores, embeddings = self.forward(model, batch)
        return multibranch_losses(scores, embeddings, batch, self)
