"""A minimal fair plugin: registers one method, ``smooth_ce`` (label-smoothed cross-entropy).

Loss: ``CE(f(x), (1 - eps) * onehot(y) + eps / C)`` (Szegedy et al., CVPR 2016).
"""

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fair_core import Method, hookimpl


class SmoothCE(Method):
    """Cross-entropy with label smoothing."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        smoothing: float = Field(0.1, ge=0, lt=1)

    stage = "in-processing"
    description = "label-smoothed cross-entropy (example plugin)"

    def compute_loss(self, model, batch):
        return F.cross_entropy(model(batch["image"]), batch["target"], label_smoothing=self.params.smoothing)


@hookimpl
def fair_register_methods(register):
    register("smooth_ce", SmoothCE)
