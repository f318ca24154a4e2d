"""FDR: fairness-aware last-layer refit (Mao et al., "Last-Layer Fairness Fine-tuning is Simple and
Effective for Neural Networks", arXiv 2304.03935, 2023).

Stage 1 trains a base model with plain cross-entropy (the ``erm`` run in ``<output_dir>/base``, or
``base``; the study's script trained its own, SGD for up to 100 epochs, keeping the best validation
loss's weights). Stage 2 freezes its encoder and replaces its last layer by one fitted on frozen
features:

* the set: the training split (and ``extra_splits``; the study used train + validation), every
  (y, a) cell sampled without replacement down to the smallest non-empty cell's size;
* a fresh linear layer (PyTorch's ``nn.Linear`` initialisation, ``U(-1/sqrt(D), 1/sqrt(D))``, as
  the authors' ``append_last_layer``), fitted full-batch for ``epochs`` steps of SGD (``lr``,
  momentum 0.9, weight decay 5e-4) on

      eo, ae:  L = NLL_w + alpha * constraint,   w_y = max_c n_c / n_y over the set's classes
      mmf:     L = max_{(y, a)} L_{y,a}          (the worst cell's loss is the objective itself,
                                                 as in the authors' and the study's code; no alpha)

  with ``p = softmax(logits)``, ``NLL_w`` the class-weighted mean negative log-likelihood (the
  study's weights; all 1 when the set has every cell, as the authors' plain NLL) and ``L_S`` the
  plain mean NLL over the samples ``S``:

  - **eo** (equalised odds), per class ``c`` one-vs-rest (``p_c``, ``y_c = [y = c]``), averaged
    over the classes, with the conditional rates of each group ``a``
    ``FPR_a = sum p_c (1 - y_c) [a] / sum (1 - y_c) [a]`` and ``FNR_a = sum (1 - p_c) y_c [a] / sum y_c [a]``:
    ``(max_a FPR_a - min_a FPR_a) + (max_a FNR_a - min_a FNR_a)``; with two groups
    ``|FPR_1 - FPR_0| + |FNR_1 - FNR_0|``, and with two classes the mean over both classes equals
    the binary term of class 1 (class 0's FPR is class 1's FNR and the other way round);
  - **ae** (accuracy equality): ``max_a L_a - min_a L_a`` (``|L_1 - L_0|`` with two groups);
  - **mmf** (min-max fairness): ``max_{(y, a)} L_{y,a}``.

  A group with no sample to condition a rate on (no negatives, or no positives, of ``c``) is left
  out of that rate's max - min; the balanced set has every cell, so this only happens in cells
  absent from the data.

The encoder is untouched (bit-identical to the base's, BatchNorm statistics included: the
features are computed once, in eval mode, without gradients); the new layer is copied into the
classifier's ``head``, so the saved model is a plain classifier and inference is the default.

Defaults (the study's CelebA and CIFAR-10S settings): ``constraint = "eo"``, ``alpha = 2``,
``epochs = 1000``, ``lr = 1e-3``; the study's UTKFace runs used 1500 epochs (lr 5e-3 for age,
1e-3 for race) and ``extra_splits`` the validation split everywhere. The subset and the new layer's
initial weights are drawn from one generator seeded with ``train.seed``. Features are extracted only
for the balanced subset (the rest would go unused), with the evaluation transform (no
augmentation), each process computing its share and all of them gathering the whole subset, so
every process fits the same layer (and evaluation and the saved model take the main process's).
The balanced set is drawn from the run's ``data.train_split``, as for every method (the study fed
FDR all of CelebA's training split while the other methods got a subsampled one).

The study's code (``FDR/utils.py``, ``FDR/cifar10s.py``), and what is done here instead:

* EO divides both rates by the group's size (joint rates ``P(error, y | a)``), not by the group's
  negatives and positives; here the conditional FPR and FNR, as the paper's equalised odds;
* on CIFAR-10S, EO uses ``softmax[:, 1]`` against every class's one-vs-rest target; here each
  class's own probability ``softmax[:, c]``;
* the balanced set takes ``min`` over all cells, so one empty (y, a) cell leaves nothing to fit on
  (and AE, and CIFAR-10S's MMF, are NaN on an empty group or cell); here the smallest non-empty cell
  sets the size and empty cells and groups are left out of the constraints;
* two groups only (``a`` and ``1 - a``); here any number, through max - min over groups;
* on CIFAR-10S, NAdam instead of the paper's SGD; here SGD everywhere;
* the CIFAR-10S training features come from randomly augmented images; here un-augmented ones.

On the synthetic dataset (the base: ``examples/erm.json``, 12 epochs; the refit with the defaults
and ``extra_splits: ["val"]``; train seeds 0/1/2), each constraint lowers the gap it targets at
some accuracy, and MMF's balanced refit removes much of the colour shortcut:

* ERM:  accuracy 0.921/0.889/0.896, DEO 0.310/0.446/0.414, accuracy gap 0.153/0.223/0.206, worst cell 0.690/0.554/0.586;
* eo:   accuracy 0.856/0.766/0.761, DEO 0.028/0.082/0.044;
* ae:   accuracy 0.884/0.864/0.877, accuracy gap 0.022/0.030/0.027;
* mmf:  accuracy 0.952/0.953/0.964, worst cell 0.840/0.816/0.882, DEO 0.160/0.184/0.118.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, field_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from fair_core import Classifier, FairDataset, FairError, Method, TrainingData
from fair_core.base_model import BaseModelParams
from fair_core.evaluate import evaluation_loader

from .cells import balanced_cell_size, by_split_row, cell_index, resample_cells

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


class FDRParams(BaseModelParams):
    model_config = ConfigDict(extra="forbid")
    constraint: Literal["eo", "ae", "mmf"] = Field(
        "eo", description="fairness term: eo (equalised-odds gap of soft rates), ae (gap of the groups' losses), "
        "mmf (the objective is the worst (class, group) cell's loss)")
    alpha: float = Field(2.0, ge=0, description="weight of the eo / ae term (mmf has none)")
    epochs: int = Field(1000, ge=1, le=1_000_000, description="full-batch SGD steps fitting the new last layer")
    lr: float = Field(1e-3, gt=0, description="SGD learning rate of the new last layer (momentum 0.9, weight decay 5e-4)")
    extra_splits: list[str] = Field(
        default_factory=list, max_length=16,
        description="splits added to data.train_split before balancing (the study: the validation split)")

    @field_validator("extra_splits")
    @classmethod
    def _distinct(cls, splits: list[str]) -> list[str]:
        if len(set(splits)) != len(splits):
            raise ValueError("lists a split more than once")
        return splits


# --------------------------------------------------------------------------- the constraints
def group_means(values: Tensor, members: Tensor, groups: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """For ``values`` and 0/1 ``members`` ``(N, K)``: the mean of each column's values over its
    members in each group, ``sum_i v_ik m_ik [g_i = a] / sum_i m_ik [g_i = a]``, ``(num_groups, K)``,
    and whether that group has any member (the mean is 0 where it has none)."""
    totals = values.new_zeros(num_groups, values.shape[1]).index_add(0, groups, values * members)
    counts = values.new_zeros(num_groups, values.shape[1]).index_add(0, groups, members)
    return totals / counts.clamp_min(1.0), counts > 0


def spread(means: Tensor, present: Tensor) -> Tensor:
    """``max_a - min_a`` of each column of ``means`` ``(groups, K)`` over the groups ``present``;
    0 for a column with no group present."""
    highest = means.masked_fill(~present, -math.inf).amax(0)
    lowest = means.masked_fill(~present, math.inf).amin(0)
    return torch.where(present.any(0), highest - lowest, torch.zeros_like(highest))


def equalized_odds_gap(probs: Tensor, targets: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Mean over classes ``c`` of the FPR and FNR spreads over groups of soft one-vs-rest
    predictions ``probs[:, c]`` (rates conditional on the group's negatives / positives of ``c``)."""
    positive = F.one_hot(targets, probs.shape[1]).to(probs.dtype)
    false_positive = spread(*group_means(probs, 1 - positive, groups, num_groups))
    false_negative = spread(*group_means(1 - probs, positive, groups, num_groups))
    return (false_positive + false_negative).mean()


def loss_gap(losses: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """``max_a L_a - min_a L_a``, ``L_a`` the mean of ``losses`` over group ``a``."""
    column = losses[:, None]
    return spread(*group_means(column, torch.ones_like(column), groups, num_groups))[0]


def worst_cell_loss(losses: Tensor, targets: Tensor, groups: Tensor, num_classes: int, num_groups: int) -> Tensor:
    """``max_{(y, a)} L_{y,a}`` over the non-empty (target, group) cells, ``L`` the mean of ``losses``."""
    column = losses[:, None]
    means, present = group_means(column, torch.ones_like(column), cell_index(targets, groups, num_classes),
                                 num_classes * num_groups)
    return means[present].max()


def class_weights(targets: Tensor, num_classes: int) -> Tensor:
    """``max_c n_c / n_y`` for every class ``y`` (a class absent from ``targets`` gets ``max_c n_c``,
    which no sample uses)."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    return counts.max() / counts.clamp_min(1.0)


def refit_objective(logits: Tensor, targets: Tensor, groups: Tensor, weights: Tensor, constraint: str, alpha: float,
                    num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """(the objective, the class-weighted NLL, the constraint's value) of the new layer's ``logits``."""
    log_probs = logits.log_softmax(1)
    losses = -log_probs.gather(1, targets[:, None])[:, 0]
    sample_weights = weights[targets]
    weighted_nll = (sample_weights * losses).sum() / sample_weights.sum()
    if constraint == "mmf":
        worst = worst_cell_loss(losses, targets, groups, logits.shape[1], num_groups)
        return worst, weighted_nll, worst
    if constraint == "eo":
        penalty = equalized_odds_gap(log_probs.exp(), targets, groups, num_groups)
    else:
        penalty = loss_gap(losses, groups, num_groups)
    return weighted_nll + alpha * penalty, weighted_nll, penalty


# --------------------------------------------------------------------------- the refit
def balanced_subset(targets: Tensor, groups: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """Sorted positions giving every non-empty (target, group) cell the smallest non-empty cell's
    size, drawn without replacement."""
    cells = cell_index(targets, groups, num_classes)
    return resample_cells(cells, balanced_cell_size(cells, "us"), generator)


def fresh_head(feature_dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A new ``nn.Linear`` initialised as PyTorch does (weight and bias ``U(-1/sqrt(D), 1/sqrt(D))``),
    from ``generator``."""
    head = nn.utils.skip_init(nn.Linear, feature_dim, num_classes)
    bound = 1 / math.sqrt(feature_dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


def fit_head(features: Tensor, targets: Tensor, groups: Tensor, num_classes: int, num_groups: int, params: FDRParams,
             generator: torch.Generator, show_progress: bool = False) -> tuple[nn.Linear, dict[str, float]]:
    """A new last layer fitted full-batch on ``features`` (on their device), and the final values of
    the objective, its parts and the accuracy on the fitted set."""
    head = fresh_head(features.shape[1], num_classes, generator).to(features.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=params.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    weights = class_weights(targets, num_classes).to(features.device)
    bar = tqdm(range(params.epochs), desc=f"fdr: refitting the last layer ({params.constraint})", leave=False,
               disable=None if show_progress else True)
    for epoch in bar:
        loss, _, _ = refit_objective(head(features), targets, groups, weights, params.constraint, params.alpha, num_groups)
        value = loss.item()
        if not math.isfinite(value):
            raise FairError(f"fdr: the last-layer refit diverged (objective {value} at epoch {epoch + 1}); lower "
                            f"method.params.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch % 50 == 0:
            bar.set_postfix(loss=f"{value:.4f}")
    with torch.no_grad():
        logits = head(features)
        loss, nll, penalty = refit_objective(logits, targets, groups, weights, params.constraint, params.alpha, num_groups)
        accuracy = (logits.argmax(1) == targets).float().mean()
    return head, {"loss": loss.item(), "nll": nll.item(), params.constraint: penalty.item(), "accuracy": accuracy.item()}


@torch.no_grad()
def extract_features(network: Classifier, dataset: FairDataset, trainer) -> Tensor:
    """``network.features`` of every sample of ``dataset`` (distinct split rows), in its order: each
    process computes its share of the batches and gathers everyone's."""
    accelerator = trainer.accelerator
    loader = evaluation_loader(accelerator, trainer.run_spec.task, dataset, trainer.spec.eval.batch_size,
                               trainer.spec.train.num_workers)
    position = by_split_row(dataset, torch.arange(len(dataset)))  # batches carry split rows
    features = torch.zeros(len(dataset), network.feature_dim)
    for batch in tqdm(loader, desc="fdr: features", leave=False,
                      disable=None if accelerator.is_local_main_process else True):
        computed, rows = accelerator.gather_for_metrics((network.features(batch["image"]).float(), batch["index"]))
        features[position[rows.cpu()]] = computed.cpu()
    return features


class FDR(Method):
    """Refit the last layer on frozen features of a balanced set, with a fairness constraint."""

    Params = FDRParams
    stage = "post-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    two_stage = True
    description = "new last layer fitted full-batch on frozen features of a balanced set, + eo / ae / mmf constraint"
    paper = "Mao et al., Last-Layer Fairness Fine-tuning is Simple and Effective for Neural Networks, arXiv 2304.03935"

    def prepare_data(self, train_set: FairDataset, generator: torch.Generator) -> TrainingData:
        self.train_set = train_set
        return TrainingData(train_set)

    def stage_train(self, train):
        return train.model_copy(update={"epochs": 0})  # no loop: the refit is post_train

    @classmethod
    def check_run(cls, run) -> None:
        """The extra splits exist and are neither the training nor the evaluation split."""
        spec, builder = run.spec, run.dataset
        for split in run.method_params.extra_splits:
            if split not in builder.splits:
                raise FairError(f"method.params.extra_splits: unknown split {split!r} for {builder.name}; available: "
                                f"{', '.join(builder.splits)}")
            if split == spec.data.train_split:
                raise FairError(f"method.params.extra_splits: {split!r} is data.train_split, already in the refit set")
            if spec.eval.data is None and split == spec.eval.split:
                raise FairError(f"method.params.extra_splits: {split!r} is eval.split; the last layer would be fitted "
                                f"on the data it is evaluated on")

    def setup(self, model: nn.Module, trainer) -> None:
        """Check the model and the extra splits before any work, and read those splits."""
        network = trainer.accelerator.unwrap_model(model)
        if not isinstance(network, Classifier) or not isinstance(network.head, nn.Linear):
            raise FairError(f"method.name: fdr refits the linear head of a classifier; model.name "
                            f"{trainer.spec.model.name} builds a {type(network).__name__}")
        spec, builder = trainer.spec, trainer.run_spec.dataset
        self.refit_sets = [self.train_set.with_transform(builder.eval_transform())]  # features of un-augmented images
        for split in self.params.extra_splits:  # names checked by check_run
            extra = builder.load(split, spec.data.target, spec.data.sensitive, train=False, task=trainer.run_spec.task)
            if (extra.info.class_names, extra.info.group_names) != (self.info.class_names, self.info.group_names):
                raise FairError(f"method.params.extra_splits: the {split} split's classes or groups are not the "
                                f"training split's")
            self.refit_sets.append(extra)

    def post_train(self, model: nn.Module, trainer) -> None:
        network = trainer.accelerator.unwrap_model(model).eval()
        targets = torch.cat([d.targets for d in self.refit_sets])
        groups = torch.cat([d.groups for d in self.refit_sets])
        generator = torch.Generator().manual_seed(trainer.spec.train.seed)
        chosen = balanced_subset(targets, groups, self.info.num_classes, generator)
        features, start = [], 0
        for dataset in self.refit_sets:  # chosen is sorted: the parts come in its order
            mine = chosen[(chosen >= start) & (chosen < start + len(dataset))] - start
            features.append(extract_features(network, dataset.select(mine), trainer))
            start += len(dataset)
        device = trainer.device
        head, final = fit_head(torch.cat(features).to(device), targets[chosen].to(device), groups[chosen].to(device),
                               self.info.num_classes, self.info.num_groups, self.params, generator,
                               show_progress=trainer.accelerator.is_local_main_process)
        network.head.load_state_dict(head.state_dict())
        trainer.log({**{f"fdr/{k}": v for k, v in final.items()}, "fdr/samples": chosen.numel()})
