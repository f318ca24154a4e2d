"""Fair classifiers as the `fair augment` labeller: one model per attribute (VLBC labels its
synthetic faces with CelebA attribute classifiers and FairFace's age/race models)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fair_core import FairError
from fair_core.augment import Labeller
from fair_core.hub import FairModel


class ClassifiersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, str] = Field(description="attribute -> a classifier predicting it (run folder or Hub id)")
    batch_size: int = Field(64, ge=1)


class Classifiers(Labeller):
    """Each attribute's value is the argmax of its classifier (``from_pretrained``, safetensors)."""

    Params = ClassifiersParams
    description = "trained fair classifiers (run folders or Hub ids), one per attribute"

    def __init__(self, params: ClassifiersParams, device: torch.device):
        super().__init__(params, device)
        self.models: dict[str, FairModel] = {}
        for attribute, source in params.models.items():
            try:
                model = FairModel.from_pretrained(source)
            except FairError as exc:
                raise FairError(f"labeller.params.models.{attribute}: {exc}") from None
            if model.task != "classification":
                raise FairError(f"labeller.params.models.{attribute}: {source} is a {model.task} model")
            self.models[attribute] = model.to(device).eval()

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        return {attribute: tuple(model.class_names) for attribute, model in self.models.items()}

    def label(self, images: Tensor) -> dict[str, Tensor]:
        out = {}
        with torch.no_grad():
            for attribute, model in self.models.items():
                out[attribute] = torch.cat([model.predict(chunk.to(self.device)).cpu()
                                            for chunk in images.split(self.params.batch_size)])
        return out
