"""The base class of fairness methods.

A method customises one run of the shared training loop (:mod:`fair_core.runner`) through these
hooks, each with a plain default, so that ``ERM`` is the base class with nothing overridden:

* pre-processing: :meth:`Method.prepare_data` changes the training set or its sampling weights;
* building: :meth:`Method.build_model` wraps or extends the backbone (extra heads, new outputs),
  :meth:`Method.configure_optimizers` adds optimisers;
* set-up: :meth:`Method.setup` (extra loaders, auxiliary networks);
* training: :meth:`Method.training_step` (by default: :meth:`Method.compute_loss`, backward, step);
  :meth:`Method.on_epoch_start` / :meth:`Method.on_epoch_end`;
* inference: :meth:`Method.predict` turns the model's output into class scores (per pixel for
  segmentation), :meth:`Method.embed` gives the embeddings of face verification;
* post-processing: :meth:`Method.post_train` runs once after the last epoch (fine-tune a layer,
  learn an input perturbation, ...).
* two stages: a method with ``two_stage = True`` starts from a trained model, ``method.params.base``
  (its ``Params`` extend :class:`fair_core.base_model.BaseModelParams`), trained first in the same
  run when omitted. :meth:`Method.use_base` receives it before the model is built (by default the
  backbone starts from its weights), and :meth:`Method.stage_train` may give the method's own loop
  its own recipe (epochs, optimiser, lr: the paper's settings of the post-processing step).

A method declares the tasks it supports (``tasks``; ``"*"`` for any task); its default loss is
the task's (:meth:`fair_core.tasks.Task.loss`), so the base class is ERM for every task.

Whatever a method adds to the model must be an ``nn.Module`` attribute of what ``build_model``
returns: its weights are then saved, resumed and reloaded with the rest. Other state that must
survive a resume goes through :meth:`Method.state_dict` / :meth:`Method.load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from .data import DataInfo, FairDataset, NoParams

if TYPE_CHECKING:
    from .runner import ResolvedRun, Trainer
    from .spec import TrainSpec
    from .tasks import Task

ANY_TASK = "*"


@dataclass
class TrainingData:
    """The training set a method trains on, and how an epoch draws from it: a plain permutation
    by default; with ``sampling_weights``, ``len(dataset)`` draws with replacement; with
    ``epoch_order``, the positions that function returns for the epoch's seeded generator, in
    that order (``len(dataset)`` of them; repeats allowed). Consecutive positions form the
    batches, so an order can shape them: K images of each identity side by side, equal cells."""

    dataset: FairDataset
    sampling_weights: Tensor | None = None
    epoch_order: Callable[[torch.Generator], Tensor] | None = None


class Method:
    """Base class of fairness methods. Plain empirical risk minimisation when nothing is overridden."""

    Params: ClassVar[type[BaseModel]] = NoParams
    stage: ClassVar[Literal["baseline", "pre-processing", "in-processing", "post-processing"]] = "in-processing"
    paper: ClassVar[str] = ""
    description: ClassVar[str] = ""
    ddp_find_unused_parameters: ClassVar[bool] = False  # True when a step leaves some parameters unused
    tasks: ClassVar[tuple[str, ...]] = ("classification",)  # the tasks it supports; ("*",): any
    two_stage: ClassVar[bool] = False  # starts from a trained model (params.base; see fair_core.base_model)
    uses_task_loss: ClassVar[bool] = True  # False when its loss is its own (then train.loss other than CE is refused)

    def __init__(self, params: BaseModel, info: DataInfo, task: Task | None = None):
        from .tasks import ClassificationTask

        self.params, self.info = params, info
        self.task = task if task is not None else ClassificationTask()
        self.base: nn.Module | None = None  # two-stage methods, in training: the frozen base model

    @classmethod
    def supports(cls, task: str) -> bool:
        return ANY_TASK in cls.tasks or task in cls.tasks

    @classmethod
    def check_run(cls, run: ResolvedRun) -> None:
        """Refuse, with one :class:`~fair_core.errors.FairError` line naming the field, what the
        method's params ask of the rest of the spec that cannot be (a split the dataset lacks, ...).
        Called when a spec is resolved, before any data is read or any stage trains."""

    # ------------------------------------------------------------------ pre-processing
    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        """Return the training set to use (default: unchanged). ``generator`` is seeded by the run."""
        return TrainingData(train_set)

    # ------------------------------------------------------------------ two stages
    def use_base(self, base: nn.Module, backbone: nn.Module) -> None:
        """Two-stage methods, in training (also when resumed), before :meth:`build_model`: ``base``
        is the trained base model (the spec's architecture, frozen, in eval mode, on the run's
        device), ``backbone`` the freshly built model. By default the backbone starts from the
        base's weights (the frozen predictor of a post-processing method); a teacher-student method
        keeps ``base`` aside instead. A resumed run then loads its checkpoint over the backbone."""
        self.base = base
        backbone.load_state_dict(base.state_dict())

    def stage_train(self, train: TrainSpec) -> TrainSpec:
        """The recipe of this method's training loop (default: the spec's ``train``, which also
        trained the base model). A post-processing method returns its own epochs, optimiser and lr
        here (``train.model_copy(update=...)``); 0 epochs leaves all its work to :meth:`post_train`."""
        return train

    # ------------------------------------------------------------------ building
    def build_model(self, backbone: nn.Module) -> nn.Module:
        """Return the module to train (default: the backbone). Must be rebuildable from params."""
        return backbone

    def configure_optimizers(self, model: nn.Module, make_optimizer) -> list[torch.optim.Optimizer]:
        """Optimisers, the first one being stepped by the default training step.
        ``make_optimizer(parameters)`` builds the optimiser the spec's ``train`` section asks for."""
        return [make_optimizer(model.parameters())]

    def setup(self, model: nn.Module, trainer: Trainer) -> None:
        """Called once before the first training epoch of this process (also after a resume, once
        :meth:`load_state_dict` has run): build extra loaders, train auxiliary networks."""

    # ------------------------------------------------------------------ training
    def compute_loss(self, model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """The task's default loss on the model's output (classification: cross-entropy of the
        logits on the batch's targets)."""
        return self.task.loss(model(batch["image"]), batch, self.info)

    def training_step(self, model: nn.Module, batch: dict[str, Tensor], trainer: Trainer) -> dict[str, Any]:
        """One optimisation step; returns what to log (must include ``loss``)."""
        loss = self.compute_loss(model, batch)
        trainer.step(loss)
        return {"loss": loss.detach()}

    def on_epoch_start(self, model: nn.Module, trainer: Trainer) -> None:
        """Called before each training epoch."""

    def on_epoch_end(self, model: nn.Module, trainer: Trainer) -> None:
        """Called after each training epoch, before the checkpoint is written."""

    # ------------------------------------------------------------------ post-processing
    def post_train(self, model: nn.Module, trainer: Trainer) -> None:
        """Called once after the last epoch, with the trained model."""

    # ------------------------------------------------------------------ inference
    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Class scores ``(N, C)``, or ``(N, K, h, w)`` per pixel (the argmax is the prediction)."""
        return model(images)

    def embed(self, model: nn.Module, images: Tensor) -> Tensor:
        """Verification: the embeddings ``(N, D)`` of images (normalised by the task)."""
        return model.features(images)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Method state beyond module weights that a resumed run needs (tensors, numbers, strings)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
