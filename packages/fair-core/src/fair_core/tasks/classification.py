"""Image classification: batches ``{image, target, group, index}``, cross-entropy on the logits (or
the focal loss: ``train.loss``, :mod:`fair_core.losses`), evaluation from the group confusion counts
``counts[g, y, p]`` (:mod:`fair_core.metrics.classification`), ``predictions.csv`` per sample,
bootstrap confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import Tensor, nn

from ..data import DataInfo, FairDataset
from ..hub import FairModel
from ..losses import focal_loss
from ..metrics import FairnessMetrics, Metric
from ..report import summarize, write_predictions
from .base import Evaluation, Task, metrics_markdown, metrics_table, rows_markdown, rows_table

if TYPE_CHECKING:
    from ..spec import TrainSpec


class ClassifierModel(FairModel, pipeline_tag="image-classification", tags=["fairness", "image-classification"]):
    """A fair image classifier: ``predict(images)`` gives class indices, ``predict_proba`` the
    class probabilities, for float images ``(N, 3, H, W)`` in [0, 1] of any size."""

    def predict_proba(self, images: Tensor) -> Tensor:
        return self._infer(images, lambda x: torch.softmax(self(x), dim=1))

    def predict(self, images: Tensor) -> Tensor:
        return self.predict_proba(images).argmax(dim=1)


class ClassificationEvaluation(Evaluation):
    """Class scores, targets, groups and split rows of every evaluated sample."""

    def __init__(self, task: Task, dataset: FairDataset):
        super().__init__(task, dataset)
        self._parts: list[tuple[Tensor, ...]] = []
        self._joined: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def outputs(self, method, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        scores = method.predict(model, batch["image"]).float()
        return scores, batch["target"], batch["group"], batch["index"]

    def update(self, gathered: tuple[Tensor, ...]) -> None:
        self._parts.append(gathered)
        self._joined = None

    def columns(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scores, targets, groups and split rows of every evaluated sample (joined once)."""
        if self._joined is None:
            scores, targets, groups, index = (torch.cat(p).cpu() for p in zip(*self._parts, strict=True))
            self._joined = scores, targets, groups, index
        return self._joined

    def state(self) -> Tensor:
        """The group confusion counts ``(G, C, C)``."""
        info = self.dataset.info
        scores, targets, groups, _ = self.columns()
        counts = FairnessMetrics(info.num_classes, info.num_groups)
        counts.update(scores, targets, groups)
        return counts.counts


class ClassificationTask(Task):
    """Predict one class per image; fairness across the groups of the sensitive attribute(s)."""

    name = "classification"
    description = "one class per image; confusion counts per group"
    pipeline_tag = "image-classification"
    model_noun = "image classifier"
    model_class = ClassifierModel

    focal: tuple[float, float] | None = None  # (alpha, gamma) of the focal loss; None: cross-entropy

    def configure_loss(self, train: TrainSpec) -> None:
        """Train with the loss of ``train.loss`` (:func:`fair_core.losses.configure_task_loss`)."""
        self.focal = (train.focal_alpha, train.focal_gamma) if train.loss == "focal" else None

    def loss(self, outputs: Tensor, batch: dict[str, Tensor], info: DataInfo) -> Tensor:
        """Cross-entropy of the logits on the targets, or the focal loss when the spec's
        ``train.loss`` is ``focal`` (:func:`fair_core.losses.focal_loss`)."""
        if self.focal is not None:
            alpha, gamma = self.focal
            return focal_loss(outputs, batch["target"], alpha, gamma)
        return F.cross_entropy(outputs, batch["target"])

    def evaluation(self, dataset: FairDataset) -> ClassificationEvaluation:
        return ClassificationEvaluation(self, dataset)

    def summarize(self, evaluation: ClassificationEvaluation, metrics: Sequence[Metric], eval_spec: Any,
                  seed: int) -> dict[str, Any]:
        return summarize(evaluation.state(), evaluation.dataset.info, metrics, eval_spec.bootstrap,
                         eval_spec.confidence, seed)

    def write_outputs(self, directory: Path, evaluation: ClassificationEvaluation) -> None:
        scores, _, _, index = evaluation.columns()
        write_predictions(directory / "predictions.csv", evaluation.dataset, index, scores)

    def console_tables(self, result: dict[str, Any]) -> list[Table]:
        title = f"{result['spec']['method']['name']} on {result['data']['dataset']} ({result['data']['split']}): accuracy by group"
        return [rows_table(title, result["groups"], "group"), metrics_table(result)]

    def card_target(self, data: dict[str, Any]) -> str:
        return f" to predict `{data['target']}`"

    def card_lines(self, metrics: dict[str, Any]) -> list[str]:
        return [*metrics_markdown(metrics), "", "### Accuracy by group", "", *rows_markdown(metrics.get("groups", [])), "",
                "`deo` is the equal-opportunity difference (TPR gap), `eod` the equalized-odds difference "
                "(max of TPR and FPR gaps), `aaod` their average, `spd` the statistical parity difference; "
                "confidence intervals are percentile bootstrap intervals."]

    def usage_lines(self, repo_id: str, config: dict[str, Any]) -> list[str]:
        return ["from fair_core import from_pretrained", "", f'model = from_pretrained("{repo_id}")',
                "labels = model.predict(images)  # float tensor (N, 3, H, W) in [0, 1]",
                f"# classes: {list(config['data']['class_names'])}"]
