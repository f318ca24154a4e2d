"""``mixfairface``: the MixFair adapter (Wang et al., "MixFairFace: Towards Ultimate Fairness via
MixFair Adapter in Face Recognition", AAAI 2023; code: github.com/fuenwang/MixFairFace).

The idea: an identity whose features are biased (by race, say) lies closer to some identities
than a fair embedding would put it. MixFairFace estimates that *identity bias* per sample by
mixing the backbone's feature maps of two images of the batch and looking at which of the two
the mixed feature's embedding leans to; the estimate is added to the margin of the identity
loss, so biased samples get a larger margin.

The network (:class:`MixFairFaceNetwork`): the backbone's stage-4 feature map ``E(x)`` (the
face backbone's ``encoder`` without its embedding head: 512x7x7 for IResNet-34 at 112 px), a
*debias layer* ``M = BN1d(flat) -> Dropout(0.4) -> Linear(flat -> D) -> BN1d(D)`` on the
flattened map (it replaces the backbone's embedding head), and a CosFace head (``s = 64``,
``m = 0.35``; ArcFace may be chosen). The embedding verification evaluates is ``M(E(x))``; the
task L2-normalises it after summing the embeddings of the image and its mirror image when
``eval.params.flip`` is set, which is what the original's evaluation does (sum, then normalise).

A training step (MixFair adapter), for a batch ``x`` with identities ``y`` and a random
permutation ``pi`` of the batch:

* ``k = E(x)``; ``f_a = norm(M(flat(k)))``; ``f_b = f_a[pi]``;
* ``f_mix = norm(M(flat(0.5 k + 0.5 k[pi])))``;
* ``eps_i = (f_mix_i . f_b_i)^2 - (f_mix_i . f_a_i)^2``, the estimated identity bias;
* ``logit_ij = s (cos theta_ij - 1[j = y_i] (m + eps_i + m_cifp_i))`` with ``cos theta_ij`` the
  cosine of ``f_a_i`` and the class weight ``W_j``; the loss is their cross-entropy. With
  ArcFace the extra margin adds to the angular margin: ``s cos(theta_iy + m + eps_i + m_cifp_i)``.
* CIFP margin ``m_cifp`` (as in the original's head: always on, ``cifp: true``): over the
  process's batch of ``B`` samples, the ``k = ceil(B (C - 1) / (C - 1)) = B`` largest of the
  ``B (C - 1)`` negative cosines; of those, keep the ones with ``cos theta_iy - m > cos theta_ij``
  (negatives still separated by the margin); ``m_cifp_i`` = the mean of the squares of the kept
  negatives of row ``i`` (0 when none). With ArcFace the kept rule is
  ``cos(theta_iy + m) > cos theta_ij`` (the head's margined target; the original has no ArcFace).

Defaults of the paper and its code: SGD lr 0.1, momentum 0.9, weight decay 5e-4 (on every
parameter); MultiStepLR gamma 0.1 at epochs 8, 18, 30, 34 of 40 (``train.milestones: [0.2, 0.45,
0.75, 0.85]``); batch 128 per GPU on 4 GPUs; horizontal flip as the only augmentation; 112x112
RGB inputs in [0, 1] *without* mean/std normalisation (that is the dataset's preprocessing: the
RFW / face-zip datasets default to it; ``synthetic_faces`` normalises its own way).

Where this differs from the original, and why:

* The permutation ``pi`` comes from a generator seeded by (``train.seed``, the global step, the
  process index) instead of torch's global random state, so a run is reproducible and a resumed
  run draws the same permutations as an uninterrupted one. As in the original it may map a
  sample to itself (then ``eps_i`` is about 0).
* The whole MixFair computation (the encoder, both passes through ``M`` and the head's cosines)
  runs inside the model's ``forward`` (``model(images, mix_permutation=pi)``), so DDP sees every
  parameter used in one forward (``ddp_find_unused_parameters`` stays False). The original calls
  the submodules one by one from the Lightning module.
* Kept as in the original, on purpose: ``f_a`` and ``f_mix`` go through ``M`` in two separate
  train-mode calls, so they get different dropout masks and the BatchNorm layers of ``M`` update
  their running statistics twice per step (once with the real batch, once with the mixed one).
  Neither ``eps`` nor ``m_cifp`` is detached (``detach: false``); ``detach: true`` detaches both,
  an option of ours. Measured on ``synthetic_faces`` (``examples/faces_mixfairface.json``, small
  CNN, 10 epochs, Adam; ``bench/faces_synthetic.py``, seeds 0-2): the undetached eps, whose
  gradient reaches the embeddings scaled by ``s = 64``, stalls the identity loss (about 8 after 10
  epochs against 0.3 for ``margin``), so TPR at FPR 1e-3 falls to 0.34 +- 0.23 against CosFace's
  0.78 +- 0.07; the TPR gap shrinks only because every group is verified worse (worst group
  0.29 against 0.60). Dropout 0 did not cure it (seed 0: TPR 0.59); ``detach: true`` trains (TPR
  0.75 +- 0.07) but did not beat CosFace on worst-group TPR (0.55 +- 0.15 against 0.60). Not
  checked at the paper's scale (IResNet-34 on BUPT-Balancedface, SGD 0.1), where it was reported
  to help.
* The CIFP margin is optional here (``cifp: false`` turns it off; the original's code comment says
  it raises the final TPR but does not change the fairness score).
* The class weights are initialised as insightface's (normal, std 0.01) rather than Xavier-uniform;
  the cosines do not depend on the weights' scale. Checkpoints are safetensors, never pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fair_core import Classifier, FairError, Method

from .margins import CosFaceHead, MarginHead, MarginParams, build_margin_head

MIX_WEIGHT = 0.5  # k_mix = 0.5 k + 0.5 k[pi], as the paper and its code


class MixFairFaceParams(MarginParams):
    """The identity head (CosFace by default, as the paper) and the MixFair adapter's options."""

    head: Literal["cosface", "arcface"] = Field(
        "cosface", description="cosface (additive cosine margin, the paper's) or arcface (additive angular margin); "
                               "the identity bias is an extra margin, so a margin head is needed")
    cifp: bool = Field(True, description="add the CIFP margin (mean square of the batch's hardest negatives that "
                                         "the margin still separates), always on in the original code")
    detach: bool = Field(False, description="detach the identity bias eps and the CIFP margin from the graph "
                                            "(the original detaches neither)")
    dropout: float = Field(0.4, ge=0, lt=1, description="dropout of the debias layer, after its first BatchNorm")


class DebiasLayer(nn.Module):
    """``M``: flatten -> BN1d(flat) -> Dropout -> Linear(flat -> D) -> BN1d(D)."""

    def __init__(self, flat_dim: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.bn_in = nn.BatchNorm1d(flat_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(flat_dim, embedding_dim)
        self.bn_out = nn.BatchNorm1d(embedding_dim)

    def forward(self, maps: Tensor) -> Tensor:
        return self.bn_out(self.fc(self.dropout(self.bn_in(maps.flatten(1)))))


class MixFairFaceNetwork(Classifier):
    """A face backbone's feature map (``encoder``), the debias layer ``M`` and a margin head.

    ``model(images)`` gives the head's cosines (``model.features(images) = M(flat(E(x)))`` is the
    embedding); ``model(images, mix_permutation=pi)`` runs the MixFair adapter's forward and
    returns ``(cosines of f_a, f_a, f_mix)`` with ``f_a``, ``f_mix`` L2-normalised.
    """

    def __init__(self, feature_map: nn.Module, flat_dim: int, embedding_dim: int, num_classes: int,
                 head: MarginHead, dropout: float):
        super().__init__(feature_map, embedding_dim, num_classes)
        self.debias = DebiasLayer(flat_dim, embedding_dim, dropout)
        self.head = head

    def features(self, images: Tensor) -> Tensor:
        return self.debias(self.encoder(images))

    def forward(self, images: Tensor, with_features: bool = False, mix_permutation: Tensor | None = None):
        if mix_permutation is None:
            features = self.features(images)
            scores = self.head(features)
            return (scores, features) if with_features else scores
        maps = self.encoder(images)
        f_a = F.normalize(self.debias(maps), dim=1)
        mixed = MIX_WEIGHT * maps + (1 - MIX_WEIGHT) * maps[mix_permutation]
        f_mix = F.normalize(self.debias(mixed), dim=1)  # a second train-mode pass: own dropout mask, BN update
        return self.head(f_a), f_a, f_mix


# --------------------------------------------------------------------------- the loss terms
def identity_bias(f_a: Tensor, f_mix: Tensor, permutation: Tensor) -> Tensor:
    """``eps_i = (f_mix_i . f_a[pi]_i)^2 - (f_mix_i . f_a_i)^2`` of L2-normalised ``(B, D)`` features."""
    f_a, f_mix = f_a.float(), f_mix.float()
    return (f_mix * f_a[permutation]).sum(1) ** 2 - (f_mix * f_a).sum(1) ** 2


def cifp_margin(cosines: Tensor, labels: Tensor, target_with_margin: Tensor) -> Tensor:
    """The CIFP margin ``(B,)`` of cosines ``(B, C)``: of the ``B`` largest negative cosines of the
    batch, those below the row's margined target ``target_with_margin`` ``(B,)`` (``cos theta_y - m``
    for CosFace); per row the mean of their squares, 0 for a row with none."""
    batch, classes = cosines.shape
    if classes < 2 or batch == 0:
        return cosines.new_zeros(batch)
    is_label = F.one_hot(labels, classes).bool()
    negatives = cosines.masked_fill(is_label, float("-inf"))
    hardest = torch.topk(negatives.flatten(), k=batch).indices  # k = ceil(B (C-1) / (C-1)) = B
    chosen = torch.zeros(batch * classes, dtype=torch.bool, device=cosines.device)
    chosen[hardest] = True
    kept = chosen.view(batch, classes) & ~is_label & (target_with_margin.unsqueeze(1) > cosines)
    squares = torch.where(kept, cosines, torch.zeros_like(cosines)) ** 2
    return squares.sum(1) / kept.sum(1).clamp_min(1)


def margined_target(head: MarginHead, cosines: Tensor, labels: Tensor) -> Tensor:
    """The label's cosine with the head's margin and no scale: ``cos theta_y - m`` (CosFace),
    ``cos(theta_y + m)`` (ArcFace, with insightface's fallback)."""
    at_label = cosines.gather(1, labels.view(-1, 1)).squeeze(1)
    if isinstance(head, CosFaceHead):
        return at_label - head.m
    return head.logits(cosines, labels).gather(1, labels.view(-1, 1)).squeeze(1) / head.s


@dataclass
class MixFairTerms:
    """One step's loss and its per-sample parts ``(B,)``: the identity bias and the CIFP margin."""

    loss: Tensor
    eps: Tensor
    cifp: Tensor
    logits: Tensor


def mixfair_logits(head: MarginHead, cosines: Tensor, labels: Tensor, eps: Tensor, cifp: Tensor) -> Tensor:
    """The head's training logits with the extra margin ``eps + m_cifp`` at the label."""
    return head.logits(cosines, labels, eps + cifp)


def step_permutation(batch_size: int, seed: int, step: int, process: int = 0) -> Tensor:
    """The batch permutation of one training step, a function of the run's seed, the global step
    and the process index only (reproducible and resumable)."""
    generator = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + process) % 2**63)
    return torch.randperm(batch_size, generator=generator)


# --------------------------------------------------------------------------- the method
class MixFairFace(Method):
    """Identity loss with a per-sample margin from the MixFair adapter's identity bias."""

    Params = MixFairFaceParams
    stage = "in-processing"
    tasks = ("verification",)
    description = "MixFair adapter: identity bias from mixed feature maps as an extra CosFace margin (+ CIFP)"
    paper = "Wang et al., MixFairFace: Towards Ultimate Fairness via MixFair Adapter in Face Recognition, AAAI 2023"
    ddp_find_unused_parameters = False  # the MixFair forward uses every parameter

    def build_model(self, backbone: nn.Module) -> nn.Module:
        encoder = getattr(backbone, "encoder", None)
        if not isinstance(encoder, nn.Sequential) or len(encoder) < 2 or not hasattr(backbone, "feature_dim"):
            raise FairError("model.name: mixfairface needs a face backbone whose encoder is an nn.Sequential ending "
                            "with its embedding head (small_embedding_cnn, the iresnets)")
        feature_map = encoder[:-1]
        size = self.info.preprocessing.image_size
        was_training = feature_map.training
        feature_map.eval()
        try:  # a dry forward gives the map's size (on the parameters' device: also the meta device)
            with torch.no_grad():
                reference = next(feature_map.parameters(), None)
                probe = torch.zeros(1, 3, size, size, device=None if reference is None else reference.device)
                flat_dim = feature_map(probe).flatten(1).shape[1]
        finally:
            feature_map.train(was_training)
        head = build_margin_head(self.params, backbone.feature_dim, self.info.num_classes)
        network = MixFairFaceNetwork(feature_map, flat_dim, backbone.feature_dim, self.info.num_classes, head,
                                     self.params.dropout)
        self.head: MarginHead = network.head  # its logits() use no weights: safe to call outside DDP
        return network

    def mixfair_terms(self, model: nn.Module, batch: dict[str, Tensor], permutation: Tensor) -> MixFairTerms:
        """The MixFair loss of ``batch`` with the batch permutation ``permutation``."""
        labels = batch["identity"]
        cosines, f_a, f_mix = model(batch["image"], mix_permutation=permutation.to(labels.device))
        eps = identity_bias(f_a, f_mix, permutation.to(labels.device))
        if self.params.cifp:
            cifp = cifp_margin(cosines, labels, margined_target(self.head, cosines, labels))
        else:
            cifp = torch.zeros_like(eps)
        if self.params.detach:
            eps, cifp = eps.detach(), cifp.detach()
        logits = mixfair_logits(self.head, cosines, labels, eps, cifp)
        return MixFairTerms(F.cross_entropy(logits, labels), eps, cifp, logits)

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The MixFair loss with a permutation from torch's global random state (the runner's
        steps use :func:`step_permutation` instead)."""
        return self.mixfair_terms(model, batch, torch.randperm(batch["identity"].numel())).loss

    def training_step(self, model: nn.Module, batch: dict[str, Tensor], trainer) -> dict[str, Any]:
        permutation = step_permutation(batch["identity"].numel(), trainer.spec.train.seed, trainer.global_step,
                                       trainer.accelerator.process_index)
        terms = self.mixfair_terms(model, batch, permutation)
        trainer.step(terms.loss)
        return {"loss": terms.loss.detach(), "eps": terms.eps.detach().mean(), "cifp": terms.cifp.detach().mean()}
