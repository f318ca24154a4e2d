"""DI: domain-independent training (Wang et al., "Towards Fairness in Visual Recognition:
Effective Strategies for Bias Mitigation", CVPR 2020).

The head outputs ``C * B`` logits, one block of ``C`` per domain (protected group) ``d``. Training
uses only the block of each sample's own domain:

    L = (1/N) sum_i -log softmax(z_{i, b_i})_{y_i}

Inference does not know the domain and sums the per-domain log-probabilities:

    yhat = argmax_y sum_d log softmax(z_{d})_y

This is the paper's (and the study's CIFAR) rule; the study's CelebA/UTKFace code summed raw
logits instead, which weighs domains by their logit scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fair_core import Method


def domain_logits(logits: Tensor, num_classes: int) -> Tensor:
    """``(N, C * B)`` -> ``(N, B, C)``: block ``d`` holds the class logits of domain ``d``."""
    return logits.view(logits.shape[0], -1, num_classes)


def sum_of_log_softmax(logits: Tensor, num_classes: int) -> Tensor:
    """Class scores ``sum_d log softmax(z_d)``, shape ``(N, C)``."""
    return F.log_softmax(domain_logits(logits, num_classes), dim=2).sum(dim=1)


class DomainIndependent(Method):
    """One classifier block per protected group; inference sums their log-probabilities."""

    stage = "in-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "domain-independent heads (C x B logits), sum of log-softmax at inference"
    paper = "Wang et al., Towards Fairness in Visual Recognition, CVPR 2020"

    def build_model(self, backbone: nn.Module) -> nn.Module:
        backbone.head = nn.Linear(backbone.feature_dim, self.info.num_classes * self.info.num_groups)
        return backbone

    def compute_loss(self, model, batch) -> Tensor:
        blocks = domain_logits(model(batch["image"]), self.info.num_classes)
        own = blocks[torch.arange(blocks.shape[0], device=blocks.device), batch["group"]]
        return F.cross_entropy(own, batch["target"])

    def predict(self, model, images: Tensor) -> Tensor:
        return sum_of_log_softmax(model(images), self.info.num_classes)
