"""Tasks: what differs between classification, face verification and semantic segmentation
(see :mod:`fair_core.tasks.base`); the runner, checkpoints, trackers and the Hub are shared."""

from .base import Evaluation, Task
from .classification import ClassificationTask, ClassifierModel
from .segmentation import SegmentationDataset, SegmentationTask, SegmenterModel
from .verification import EmbedderModel, EmbeddingSet, IdentityDataset, VerificationTask

BUILTIN_TASKS: dict[str, type[Task]] = {
    "classification": ClassificationTask,
    "verification": VerificationTask,
    "segmentation": SegmentationTask,
}

__all__ = [
    "BUILTIN_TASKS",
    "ClassificationTask",
    "ClassifierModel",
    "EmbedderModel",
    "EmbeddingSet",
    "Evaluation",
    "IdentityDataset",
    "SegmentationDataset",
    "SegmentationTask",
    "SegmenterModel",
    "Task",
    "VerificationTask",
]
