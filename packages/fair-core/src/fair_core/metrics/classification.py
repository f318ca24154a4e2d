"""Classification fairness metrics over (predictions, targets, groups).

Every metric here is a function of one summable tensor, the *group confusion counts*
``counts[g, y, p]`` = number of samples of group ``g`` with target ``y`` predicted as ``p``
(shape ``(G, C, C)``, any leading batch dimensions allowed). Counting is one ``bincount`` pass,
counts from several processes or batches are simply added (DDP-exact, like torchmetrics' summed
states), and the bootstrap resamples counts instead of samples.

Notation (for one class ``c`` treated one-vs-rest, group ``g``; ``n_g`` samples in ``g``):

* selection rate ``SR_{c,g} = P(yhat = c | g)``
* true-positive rate ``TPR_{c,g} = P(yhat = c | y = c, g)``
* false-positive rate ``FPR_{c,g} = P(yhat = c | y != c, g)``
* ``diff(x) = max_g x_g - min_g x_g`` over the groups where ``x_g`` is defined (non-zero
  denominator); ``nan`` when no group is defined.

Binary targets (``C == 2``) use the positive class ``1`` only, as fairlearn does. Multi-class
targets average the one-vs-rest differences over classes (unweighted), as in the ISSTA 2024
fairness study for CIFAR-10S.

Naming: ``deo`` is the *equal-opportunity* difference ``diff(TPR)`` and ``eod`` the
*equalized-odds* difference ``max(diff(TPR), diff(FPR))`` (fairlearn's
``equalized_odds_difference``). The ISSTA 2024 study swaps these two names ("DEO" there is the
equalized-odds difference).

The metrics of VLBC (D'Inca et al., "Improving Fairness using Vision-Language Driven Image
Augmentation", WACV 2024; their ``utils/trainer.py``) map to these, all for a target ``y`` and a
protected attribute ``p`` (the group ``g``):

* their accuracy is :func:`accuracy`; their F1 is :func:`macro_f1` (``macro_f1``);
* ``acc_diff = Acc(p=1) - Acc(p=0)`` is :func:`signed_accuracy_difference`
  (``signed_accuracy_difference``; signed, two groups only; its absolute value is ``accuracy_gap``);
* ``EOpp[p, y]``, the accuracy of the ``(p, y)`` cell, is :func:`cell_accuracy`;
* their "DEO", ``mean_y (max_p EOpp[p, y] - min_p EOpp[p, y])`` over *every* class (class 0 of a
  binary target too), is :func:`mean_class_accuracy_spread` (``mean_class_accuracy_spread``). It is
  not this module's ``deo`` (the positive class's TPR gap only): for a binary target it is the mean
  of the TPR gap and the TNR (= 1 - FPR) gap, i.e. ``aaod``, when both classes are defined in two
  groups. Their ``max_eopp`` (the max over classes instead of the mean) is not registered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .metric import Metric

__all__ = [
    "FairnessMetrics",
    "group_confusion",
    "intersect_groups",
    "accuracy",
    "balanced_accuracy",
    "group_accuracy",
    "group_selection_rate",
    "group_true_positive_rate",
    "group_false_positive_rate",
    "accuracy_gap",
    "worst_group_accuracy",
    "worst_cell_accuracy",
    "cell_accuracy",
    "macro_f1",
    "signed_accuracy_difference",
    "mean_class_accuracy_spread",
    "statistical_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "average_absolute_odds_difference",
    "bootstrap_counts",
    "bootstrap_confidence_interval",
    "BUILTIN_METRICS",
]


# --------------------------------------------------------------------------- counting
def intersect_groups(attributes: Tensor, sizes: Sequence[int]) -> Tensor:
    """Combine several sensitive attributes (columns of ``attributes``, shape ``(N, A)``, with
    ``sizes[a]`` values each) into one intersectional group index in mixed radix, the first
    attribute varying slowest: ``g = ((a_0 * s_1) + a_1) * s_2 + a_2 ...``."""
    attributes = torch.as_tensor(attributes, dtype=torch.long)
    if attributes.ndim == 1:
        return attributes
    group = torch.zeros(attributes.shape[0], dtype=torch.long, device=attributes.device)
    for column, size in zip(attributes.unbind(1), sizes, strict=True):
        group = group * size + column
    return group


def group_confusion(
    preds: Tensor, targets: Tensor, groups: Tensor, num_classes: int, num_groups: int
) -> Tensor:
    """Counts ``(G, C, C)``: ``counts[g, y, p]`` samples of group ``g``, target ``y``, prediction
    ``p``. ``preds`` may be hard labels ``(N,)`` or class scores ``(N, C)`` (argmax is taken)."""
    if preds.ndim == 2:
        preds = preds.argmax(dim=1)
    preds, targets, groups = (t.reshape(-1).long() for t in (preds, targets, groups))
    if not (preds.numel() == targets.numel() == groups.numel()):
        raise ValueError("preds, targets and groups must have the same number of samples")
    cell = (groups * num_classes + targets) * num_classes + preds
    counts = torch.bincount(cell, minlength=num_groups * num_classes * num_classes)
    return counts.reshape(num_groups, num_classes, num_classes)


# --------------------------------------------------------------------------- helpers
def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with ``nan`` where den == 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, float("nan")))


def _spread(values: Tensor) -> Tensor:
    """max - min over the last dimension, ignoring nan; nan if all are nan."""
    defined = ~values.isnan()
    hi = values.masked_fill(~defined, float("-inf")).amax(-1)
    lo = values.masked_fill(~defined, float("inf")).amin(-1)
    return torch.where(defined.any(-1), hi - lo, torch.full_like(hi, float("nan")))


def _nanmin(values: Tensor) -> Tensor:
    defined = ~values.isnan()
    lo = values.masked_fill(~defined, float("inf")).amin(-1)
    return torch.where(defined.any(-1), lo, torch.full_like(lo, float("nan")))


def _one_vs_rest_rates(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Selection rate, TPR and FPR per class and group, each shaped ``(..., C, G)``."""
    counts = counts.double()
    n_g = counts.sum((-1, -2))  # (..., G)
    positives = counts.sum(-1)  # (..., G, C): samples with y = c
    predicted = counts.sum(-2)  # (..., G, C): samples with yhat = c
    hits = torch.diagonal(counts, dim1=-2, dim2=-1)  # (..., G, C)
    n = n_g.unsqueeze(-1)
    selection = _ratio(predicted, n.expand_as(predicted))
    tpr = _ratio(hits, positives)
    fpr = _ratio(predicted - hits, n - positives)
    return (selection.transpose(-1, -2), tpr.transpose(-1, -2), fpr.transpose(-1, -2))


def _classes_considered(counts: Tensor) -> slice:
    """Binary problems report the positive class 1 only; multi-class averages every class."""
    return slice(1, 2) if counts.shape[-1] == 2 else slice(None)


def _mean_over_classes(per_class: Tensor, counts: Tensor) -> Tensor:
    return per_class[..., _classes_considered(counts)].nanmean(-1)


# --------------------------------------------------------------------------- metrics on counts
def accuracy(counts: Tensor) -> Tensor:
    """``sum_g sum_c counts[g, c, c] / N``."""
    hits = torch.diagonal(counts, dim1=-2, dim2=-1).sum((-1, -2))
    return _ratio(hits, counts.sum((-1, -2, -3)))


def balanced_accuracy(counts: Tensor) -> Tensor:
    """Mean recall over the target classes present: ``mean_c P(yhat = c | y = c)``."""
    per_class = counts.sum(-3)  # (..., C, C)
    recall = _ratio(torch.diagonal(per_class, dim1=-2, dim2=-1), per_class.sum(-1))
    return recall.nanmean(-1)


def group_accuracy(counts: Tensor) -> Tensor:
    """Accuracy within each group, ``(..., G)``; nan for an empty group."""
    hits = torch.diagonal(counts, dim1=-2, dim2=-1).sum(-1)
    return _ratio(hits, counts.sum((-1, -2)))


def group_selection_rate(counts: Tensor) -> Tensor:
    """``P(yhat = c | g)`` per group ``(..., G)`` for the positive class (binary) or ``(..., C, G)``."""
    return _per_class(_one_vs_rest_rates(counts)[0], counts)


def group_true_positive_rate(counts: Tensor) -> Tensor:
    """``P(yhat = c | y = c, g)`` per group, as :func:`group_selection_rate`."""
    return _per_class(_one_vs_rest_rates(counts)[1], counts)


def group_false_positive_rate(counts: Tensor) -> Tensor:
    """``P(yhat = c | y != c, g)`` per group, as :func:`group_selection_rate`."""
    return _per_class(_one_vs_rest_rates(counts)[2], counts)


def _per_class(rates: Tensor, counts: Tensor) -> Tensor:
    return rates[..., 1, :] if counts.shape[-1] == 2 else rates


def accuracy_gap(counts: Tensor) -> Tensor:
    """``max_g acc_g - min_g acc_g`` over non-empty groups."""
    return _spread(group_accuracy(counts))


def worst_group_accuracy(counts: Tensor) -> Tensor:
    """``min_g acc_g`` over non-empty groups."""
    return _nanmin(group_accuracy(counts))


def cell_accuracy(counts: Tensor) -> Tensor:
    """Accuracy of each (group, target) cell, ``P(yhat = y | y, g)``, shaped ``(..., G, C)``; nan for
    an empty cell. VLBC's ``EOpp[p, y]`` (D'Inca et al., WACV 2024). For a class ``c`` it is the
    one-vs-rest ``TPR_{c,g}`` of every group (:func:`group_true_positive_rate` gives it as
    ``(..., C, G)`` for a multi-class target, and for the positive class only for a binary one)."""
    return _ratio(torch.diagonal(counts, dim1=-2, dim2=-1), counts.sum(-1))


def worst_cell_accuracy(counts: Tensor) -> Tensor:
    """``min_{g, y} P(yhat = y | y, g)`` over non-empty (target, group) cells (the
    "worst-group accuracy" of the group-robustness literature, groups being (y, g) cells)."""
    return _nanmin(cell_accuracy(counts).flatten(-2))


def macro_f1(counts: Tensor) -> Tensor:
    """Macro-F1 over all samples (groups pooled): the unweighted mean over classes of
    ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``, VLBC's F1 score (D'Inca et al., WACV 2024).

    Equals scikit-learn's ``f1_score(y, yhat, average="macro", zero_division=0)``: a class that is
    a target or a prediction of some sample counts (F1 0 when it has no true positive, e.g. a class
    never predicted); a class that is neither (no support, no prediction) is left out of the mean,
    as scikit-learn leaves out the labels absent from both ``y`` and ``yhat`` (passing
    ``labels=range(C)`` to scikit-learn would count it as 0 instead). nan when there is no sample.
    VLBC calls it with ``zero_division=1``, which gives the same values here: that setting only
    changes a class whose F1 denominator is 0, which is never one of the classes averaged."""
    pooled = counts.sum(-3).double()  # (..., C, C)
    hits = torch.diagonal(pooled, dim1=-2, dim2=-1)
    support, predicted = pooled.sum(-1), pooled.sum(-2)
    per_class = _ratio(2 * hits, support + predicted)  # 2TP + FP + FN = support + predicted
    return per_class.nanmean(-1)


def signed_accuracy_difference(counts: Tensor) -> Tensor:
    """``acc_{g=1} - acc_{g=0}``: VLBC's ``acc_diff`` (D'Inca et al., WACV 2024), the accuracy of
    the protected group 1 minus that of group 0, *signed* (negative when group 1 is worse). Defined
    for exactly two groups (a binary protected attribute); nan for any other number of groups and
    when either group is empty. Its absolute value is :func:`accuracy_gap`. Registered as lower is
    better only because a metric's direction is one bool: 0 is parity, and a negative value is as
    unfair as its absolute value (``fair plot``'s Pareto front would read it as better)."""
    per_group = group_accuracy(counts)
    if per_group.shape[-1] != 2:
        return torch.full(per_group.shape[:-1], float("nan"), dtype=per_group.dtype, device=per_group.device)
    return per_group[..., 1] - per_group[..., 0]


def mean_class_accuracy_spread(counts: Tensor) -> Tensor:
    """``mean_y (max_g EOpp[g, y] - min_g EOpp[g, y])`` with ``EOpp`` = :func:`cell_accuracy`: the
    spread over groups of each class's accuracy, averaged over *all* classes (unweighted; both
    classes of a binary target). This is VLBC's "DEO" (D'Inca et al., WACV 2024, ``mean_eopp``),
    not this module's ``deo`` (the TPR gap of the positive class only). A class is skipped when
    fewer than two groups have samples of it (its spread is then undefined; VLBC's code would
    return nan); nan when no class has two."""
    per_class = cell_accuracy(counts).transpose(-1, -2)  # (..., C, G)
    enough = (~per_class.isnan()).sum(-1) >= 2
    spread = torch.where(enough, _spread(per_class), torch.full_like(per_class[..., 0], float("nan")))
    return spread.nanmean(-1)


def statistical_parity_difference(counts: Tensor) -> Tensor:
    """SPD = ``diff_g P(yhat = 1 | g)`` (binary), mean over classes of ``diff_g SR_{c,g}``
    (multi-class). Equals fairlearn's ``demographic_parity_difference`` for binary targets."""
    selection, _, _ = _one_vs_rest_rates(counts)
    return _mean_over_classes(_spread(selection), counts)


def equal_opportunity_difference(counts: Tensor) -> Tensor:
    """DEO = ``diff_g TPR_g`` (binary), mean over classes (multi-class)."""
    _, tpr, _ = _one_vs_rest_rates(counts)
    return _mean_over_classes(_spread(tpr), counts)


def equalized_odds_difference(counts: Tensor) -> Tensor:
    """EOD = ``max(diff_g TPR_g, diff_g FPR_g)`` (binary; fairlearn's
    ``equalized_odds_difference``), mean over classes (multi-class)."""
    _, tpr, fpr = _one_vs_rest_rates(counts)
    worst = torch.fmax(_spread(tpr), _spread(fpr))  # an undefined side (nan) is ignored
    return _mean_over_classes(worst, counts)


def average_absolute_odds_difference(counts: Tensor) -> Tensor:
    """AAOD = ``(diff_g TPR_g + diff_g FPR_g) / 2`` (binary), mean over classes (multi-class)."""
    _, tpr, fpr = _one_vs_rest_rates(counts)
    return _mean_over_classes(0.5 * (_spread(tpr) + _spread(fpr)), counts)


# --------------------------------------------------------------------------- bootstrap
def bootstrap_counts(counts: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_samples`` bootstrap replicates of ``counts`` (shape ``(num_samples, G, C, C)``).

    Resampling N samples with replacement and re-counting is the same as drawing the cell
    counts from ``Multinomial(N, counts / N)``; it is drawn exactly as a chain of binomials,
    ``n_k ~ Binomial(N - sum_{j<k} n_j, p_k / (1 - sum_{j<k} p_j))``, in ``O(num_samples * cells)``.
    """
    flat = counts.reshape(-1).double()
    total = flat.sum()
    probs = flat / total
    remaining = torch.full((num_samples,), total.item(), dtype=torch.double)
    mass_left = torch.ones((), dtype=torch.double)
    draws = torch.zeros(num_samples, flat.numel(), dtype=torch.double)
    cells = torch.nonzero(flat).flatten().tolist()
    for k in cells[:-1]:
        p = (probs[k] / mass_left).clamp(0.0, 1.0)
        n_k = torch.binomial(remaining, p.expand_as(remaining), generator=generator)
        draws[:, k] = n_k
        remaining = remaining - n_k
        mass_left = mass_left - probs[k]
    if cells:
        draws[:, cells[-1]] = remaining  # the last cell takes what is left: totals stay N
    return draws.reshape(num_samples, *counts.shape)


def bootstrap_confidence_interval(
    metric: Callable[[Tensor], Tensor],
    counts: Tensor,
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` at the given confidence level."""
    generator = torch.Generator().manual_seed(seed)
    values = metric(bootstrap_counts(counts, num_samples, generator))
    values = values[~values.isnan()]
    if values.numel() == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2
    lo, hi = torch.quantile(values, torch.tensor([alpha, 1 - alpha], dtype=values.dtype))
    return (lo.item(), hi.item())


# --------------------------------------------------------------------------- registered metrics
BUILTIN_METRICS: tuple[Metric, ...] = (
    Metric("accuracy", accuracy, "overall", True, "fraction of correct predictions"),
    Metric("balanced_accuracy", balanced_accuracy, "overall", True, "mean recall over classes"),
    Metric("accuracy_gap", accuracy_gap, "fairness", False, "max - min accuracy over groups"),
    Metric("worst_group_accuracy", worst_group_accuracy, "fairness", True, "min accuracy over groups"),
    Metric("worst_cell_accuracy", worst_cell_accuracy, "fairness", True, "min accuracy over (target, group) cells"),
    Metric("spd", statistical_parity_difference, "fairness", False, "statistical parity difference"),
    Metric("deo", equal_opportunity_difference, "fairness", False, "equal-opportunity difference (TPR gap)"),
    Metric("eod", equalized_odds_difference, "fairness", False, "equalized-odds difference"),
    Metric("aaod", average_absolute_odds_difference, "fairness", False, "average absolute odds difference"),
    # VLBC's (D'Inca et al., WACV 2024) metrics: F1, acc_diff and their "DEO" (not `deo` above)
    Metric("macro_f1", macro_f1, "overall", True, "mean F1 over classes (scikit-learn's macro F1)"),
    Metric("signed_accuracy_difference", signed_accuracy_difference, "fairness", False,
           "accuracy of group 1 minus group 0 (signed: 0 is parity; two groups only)"),
    Metric("mean_class_accuracy_spread", mean_class_accuracy_spread, "fairness", False,
           "mean over all classes of the max - min accuracy over groups (VLBC's DEO)"),
)


class FairnessMetrics:
    """Stateful accumulator (torchmetrics-style): ``update`` adds to the count state, ``counts``
    from several processes are summed (``sync``), ``compute`` evaluates registered metrics."""

    def __init__(self, num_classes: int, num_groups: int, device: torch.device | str = "cpu"):
        self.num_classes, self.num_groups = num_classes, num_groups
        self.counts = torch.zeros(num_groups, num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, preds: Tensor, targets: Tensor, groups: Tensor) -> None:
        self.counts += group_confusion(preds, targets, groups, self.num_classes, self.num_groups).to(
            self.counts.device
        )

    def sync(self, reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Sum the state across processes, e.g. ``sync(lambda t: accelerator.reduce(t, "sum"))``."""
        self.counts = reduce_sum(self.counts)

    def compute(self, metrics: Sequence[Metric] = BUILTIN_METRICS) -> dict[str, float]:
        return {m.name: float(m.compute(self.counts)) for m in metrics}
