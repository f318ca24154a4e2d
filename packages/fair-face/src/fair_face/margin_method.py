"""``margin``: plain training of a face recogniser with a margin head (the usual baseline).

The identity head of the backbone (a linear layer, the softmax loss ``erm`` trains) is replaced
by a :mod:`margin head <fair_face.margins>`: CosFace (``s (cos theta_y - m)`` at the label,
Wang et al., CVPR 2018) by default, ArcFace (``s cos(theta_y + m)``, Deng et al., CVPR 2019) or
the plain softmax. The loss is the cross-entropy of the margin logits on the identities; the
embedding (``model.features``) is what verification evaluates. No fairness term: this is the
baseline MixFairFace and the distribution losses are compared with at the same seed and budget.
"""

from __future__ import annotations

from torch import Tensor, nn

from fair_core import Method

from .margins import MarginHead, MarginParams, build_margin_head, margin_loss


class MarginSoftmax(Method):
    """Cross-entropy of a margin head (CosFace, ArcFace or softmax) on the identities."""

    Params = MarginParams
    stage = "baseline"
    tasks = ("verification",)
    description = "face recognition baseline: CosFace / ArcFace / softmax identity head"
    paper = "Wang et al., CosFace, CVPR 2018; Deng et al., ArcFace, CVPR 2019"

    def build_model(self, backbone: nn.Module) -> nn.Module:
        backbone.head = build_margin_head(self.params, backbone.feature_dim, self.info.num_classes)
        self.head: MarginHead = backbone.head  # its logits() has no weights: safe to call outside DDP
        return backbone

    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        return margin_loss(self.head, model(batch["image"]), batch["identity"])
