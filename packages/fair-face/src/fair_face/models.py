"""Face embedding backbones.

``small_embedding_cnn`` is the small baseline of the verification task: ``small_cnn``'s three
conv-BN-ReLU blocks, then the embedding head insightface's IResNets use, at a small size: BN2d -> dropout ->
flatten -> Linear -> BN1d whose affine weight is frozen at 1. The map is pooled to 4x4 before
flattening, so the head keeps the spatial layout (where on the face a feature is) for any input
size. The identity head (softmax over the training identities) is the linear ``head`` of
:class:`fair_core.Classifier`; margin heads replace it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fair_core import Classifier, FairError, ModelBuilder
from fair_core.models import small_cnn_stages


class EmbeddingHead(nn.Module):
    """BN2d -> Dropout -> flatten -> Linear -> BN1d (weight frozen at 1), as insightface's ``features``."""

    def __init__(self, channels: int, spatial: int, embedding_dim: int, dropout: float):
        super().__init__()
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad_(False)

    def forward(self, maps):
        if maps[0].numel() != self.fc.in_features:
            side = int(round((self.fc.in_features / maps.shape[1]) ** 0.5))
            raise FairError(f"model.params.input_size: the model was built for feature maps of {side}x{side}, the images "
                            f"give {maps.shape[-2]}x{maps.shape[-1]}; set it to the data's image size")
        return self.features(self.fc(self.dropout(self.bn2(maps)).flatten(1)))


class SmallEmbeddingCNNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(16, ge=4, le=256, description="channels of the first block (doubled twice)")
    embedding_dim: int = Field(128, ge=2, le=4096, description="size of the face embedding")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the embedding layer")


class SmallEmbeddingCNN(ModelBuilder):
    """3-block CNN with an insightface-style embedding head: fast on CPU, for tests and demos."""

    Params = SmallEmbeddingCNNParams
    description = "3-block CNN with an insightface-style embedding head (verification tests, demos)"
    tasks = ("verification",)

    def build(self, num_classes: int) -> Classifier:
        w = self.params.width
        encoder = nn.Sequential(
            *small_cnn_stages(w), nn.AdaptiveAvgPool2d(4),
            EmbeddingHead(4 * w, 4, self.params.embedding_dim, self.params.dropout),
        )
        return Classifier(encoder, self.params.embedding_dim, num_classes)
