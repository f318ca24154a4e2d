"""RFW's standard verification protocol (``val``), per race, on the dataset's own pair list.

RFW (Wang et al., "Racial Faces in-the-Wild", ICCV 2019) judges a face recogniser on 6,000 pairs
of each race with the LFW protocol as insightface implements it (and MixFairFace, Wang et al.,
AAAI 2023, reports it):

* the embeddings are L2-normalised (flip-summed first when ``eval.params.flip``); a pair ``(a, b)``
  scores the squared L2 distance ``d = ||e_a - e_b||^2 = 2 - 2 cos(e_a, e_b)`` (computed as the
  squared difference, in float64); it is accepted as "same" when ``d < t`` (strict);
* the pairs of a race are cut into 10 folds in their order (sklearn's ``KFold(10)`` without
  shuffling: fold ``k`` is the ``k``-th contiguous tenth, the first ``P mod 10`` folds one pair
  longer); for each fold, the threshold ``t`` with the most correct decisions on the other 9 folds
  is taken from the grid :data:`ACCURACY_THRESHOLDS` (ties: the first, i.e. smallest, as numpy's
  ``argmax``) and the accuracy is measured on the held-out fold; the race's accuracy is the mean
  over the folds;
* VAL@FAR=1e-3 (insightface's ``calculate_val``): per fold, the threshold at which the training
  folds' false-accept rate ``FAR(t) = #{negatives with d < t} / #negatives`` reaches 1e-3, by
  linear interpolation of ``t`` over ``FAR`` on the grid :data:`VAL_THRESHOLDS`; VAL is the
  true-accept rate of the held-out fold at that threshold; the race's VAL is the mean over folds;
* the summary is the mean of the race accuracies and their standard deviation with ``ddof = 1``
  (MixFairFace's fairness number), as fractions (the papers print them x100).

The race of a pair is the group of its first image. Choices and corrections:

* Accuracy grid: MixFairFace's ``arange(0, 10, 0.001)`` rather than insightface's
  ``arange(0, 4, 0.01)``: it is the protocol whose numbers this reproduces, and its step is ten
  times finer (0.01 in squared distance is ~0.005 in cosine, coarse for models with 99% accuracy).
  Squared distances of unit vectors never exceed 4, so grid values from 4 on all accept every
  pair; they change nothing unless accepting every pair is strictly the best.
* VAL@FAR: MixFairFace computes it and then drops it; it is reported here. insightface
  interpolates with ``scipy.interpolate.interp1d(far, thresholds, kind="slinear")``, whose FAR
  values repeat along the grid (every threshold below the smallest negative distance has FAR 0):
  current scipy refuses that ("Expect x to not have duplicates"), older scipy interpolated on the
  interval that contains the target. That interval is what :func:`threshold_at_far` takes: ``lo``
  the largest grid index with ``FAR <= target``, ``t = t_lo + (target - FAR_lo) / (FAR_lo+1 -
  FAR_lo) * (t_lo+1 - t_lo)`` (``t_lo`` itself when ``FAR_lo`` equals the target). When no grid
  threshold reaches the target, insightface uses ``t = 0`` (nothing accepted, VAL 0); so do we.
* Undefined values are NaN, never an exception: every metric when the evaluated dataset has no
  pair list (``state.pairs is None``); a race with fewer than 10 pairs (``KFold(10)`` needs 10);
  a fold whose training folds hold no negative or whose held-out fold holds no positive (VAL).
  Races without any pair are not part of the protocol: NaN in their columns and left out of the
  mean and std; a race with 1 to 9 pairs is part of it, so the mean over races is then NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fair_core.metrics import Metric
from fair_core.tasks import EmbeddingSet

NUM_FOLDS = 10
#: Thresholds on the squared distance searched for the best accuracy (MixFairFace's grid); as
#: numpy's ``arange(0, 10, 0.001)``: ``i * 0.001`` in float64.
ACCURACY_THRESHOLDS = torch.arange(10_000, dtype=torch.float64) * 0.001
#: Thresholds on the squared distance for VAL@FAR (insightface's and MixFairFace's ``arange(0, 4, 0.001)``).
VAL_THRESHOLDS = torch.arange(4_000, dtype=torch.float64) * 0.001
#: The false-accept rate at which VAL is reported.
VAL_FAR = 1e-3

NAN = float("nan")


def fold_slices(n: int, folds: int = NUM_FOLDS) -> list[slice]:
    """The held-out fold of each split of ``n`` items in order, as sklearn's ``KFold(folds)``
    without shuffling: contiguous, the first ``n % folds`` one item longer (``n >= folds``)."""
    if n < folds:
        raise ValueError(f"{folds} folds need at least {folds} items, got {n}")
    base, extra = divmod(n, folds)
    bounds = [0]
    for fold in range(folds):
        bounds.append(bounds[-1] + base + (fold < extra))
    return [slice(bounds[i], bounds[i + 1]) for i in range(folds)]


def pair_distances(embeddings: Tensor, pairs: Tensor) -> Tensor:
    """``||e_a - e_b||^2`` of each pair ``(a, b, same)``, in float64."""
    a, b = embeddings[pairs[:, 0]].double(), embeddings[pairs[:, 1]].double()
    return (a - b).square().sum(1)


def _accepted(sorted_distances: Tensor, thresholds: Tensor) -> Tensor:
    """How many of the sorted distances lie strictly below each threshold."""
    return torch.searchsorted(sorted_distances, thresholds)


def correct_decisions(distances: Tensor, same: Tensor, thresholds: Tensor) -> Tensor:
    """Correct decisions ``TP + TN`` of the pairs at each threshold (``d < t`` accepts)."""
    positives = distances[same].sort().values
    negatives = distances[~same].sort().values
    return _accepted(positives, thresholds) + (negatives.numel() - _accepted(negatives, thresholds))


def best_threshold(distances: Tensor, same: Tensor, thresholds: Tensor = ACCURACY_THRESHOLDS) -> float:
    """The grid threshold with the most correct decisions; the first (smallest) of equal ones."""
    correct = correct_decisions(distances, same, thresholds)
    first = int((correct == correct.max()).nonzero()[0, 0])
    return float(thresholds[first])


def _training_mask(n: int, held_out: slice) -> Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_out] = False
    return mask


def kfold_accuracy(distances: Tensor, same: Tensor, thresholds: Tensor = ACCURACY_THRESHOLDS,
                   folds: int = NUM_FOLDS) -> tuple[Tensor, Tensor]:
    """Accuracy on each held-out fold at the best threshold of the other folds, and those
    thresholds, each ``(folds,)`` float64."""
    accuracies, chosen = torch.empty(folds, dtype=torch.float64), torch.empty(folds, dtype=torch.float64)
    for fold, held_out in enumerate(fold_slices(distances.numel(), folds)):
        train = _training_mask(distances.numel(), held_out)
        chosen[fold] = best_threshold(distances[train], same[train], thresholds)
        correct = correct_decisions(distances[held_out], same[held_out], chosen[fold:fold + 1])
        accuracies[fold] = correct.double().item() / (held_out.stop - held_out.start)
    return accuracies, chosen


def threshold_at_far(distances: Tensor, same: Tensor, far: float = VAL_FAR, thresholds: Tensor = VAL_THRESHOLDS) -> float:
    """The threshold at which the false-accept rate of these pairs is ``far``, interpolated
    linearly between the grid thresholds around it (see the module's docstring); 0 when no
    grid threshold reaches ``far``; nan without negatives."""
    negatives = distances[~same].sort().values
    if negatives.numel() == 0:
        return NAN
    rates = _accepted(negatives, thresholds).double() / negatives.numel()
    if rates.max() < far:
        return 0.0
    above = int(torch.searchsorted(rates, torch.tensor([far], dtype=torch.float64), right=True))
    if above == 0:  # the grid starts above the target (not with grids starting at 0)
        return float(thresholds[0])
    low = above - 1
    if above == rates.numel() or rates[low] == far:
        return float(thresholds[low])
    step = (far - rates[low]) / (rates[above] - rates[low])
    return float(thresholds[low] + step * (thresholds[above] - thresholds[low]))


def val_far(distances: Tensor, same: Tensor, threshold: float) -> tuple[float, float]:
    """True-accept rate (VAL) and false-accept rate (FAR) at ``threshold`` (nan without
    positives / negatives)."""
    accepted = distances < threshold
    positives, negatives = int(same.sum()), int((~same).sum())
    val = int((accepted & same).sum()) / positives if positives else NAN
    far = int((accepted & ~same).sum()) / negatives if negatives else NAN
    return val, far


def kfold_val(distances: Tensor, same: Tensor, far: float = VAL_FAR, thresholds: Tensor = VAL_THRESHOLDS,
              folds: int = NUM_FOLDS) -> Tensor:
    """VAL on each held-out fold at the threshold reaching ``far`` on the other folds, ``(folds,)``."""
    values = torch.empty(folds, dtype=torch.float64)
    for fold, held_out in enumerate(fold_slices(distances.numel(), folds)):
        train = _training_mask(distances.numel(), held_out)
        threshold = threshold_at_far(distances[train], same[train], far, thresholds)
        values[fold] = NAN if math.isnan(threshold) else val_far(distances[held_out], same[held_out], threshold)[0]
    return values


@dataclass(frozen=True)
class RaceVerification:
    """The protocol's result for each group ``(G,)``: pairs, mean fold accuracy, mean fold VAL."""

    pairs: Tensor
    accuracy: Tensor
    val: Tensor

    @property
    def in_protocol(self) -> Tensor:
        """The races that have pairs."""
        return self.pairs > 0


def race_verification(distances: Tensor, same: Tensor, races: Tensor, num_races: int) -> RaceVerification:
    """Run the protocol on each race's pairs (in their order)."""
    pairs = torch.bincount(races, minlength=num_races)
    accuracy = torch.full((num_races,), NAN, dtype=torch.float64)
    val = torch.full((num_races,), NAN, dtype=torch.float64)
    for race in range(num_races):
        if pairs[race] < NUM_FOLDS:
            continue
        mask = races == race
        accuracy[race] = kfold_accuracy(distances[mask], same[mask])[0].mean()
        val[race] = kfold_val(distances[mask], same[mask]).mean()
    return RaceVerification(pairs, accuracy, val)


def rfw_val(state: EmbeddingSet) -> RaceVerification | None:
    """The protocol on the evaluation's pair list (computed once, then cached); ``None`` without pairs."""
    if state.pairs is None:
        return None
    if "rfw_val" not in state.cache:
        pairs = state.pairs.long()
        state.cache["rfw_val"] = race_verification(pair_distances(state.embeddings, pairs), pairs[:, 2].bool(),
                                                    state.groups[pairs[:, 0]], state.num_groups)
    return state.cache["rfw_val"]


def _per_race(state: EmbeddingSet, field: str) -> Tensor:
    result = rfw_val(state)
    return torch.full((state.num_groups,), NAN, dtype=torch.float64) if result is None else getattr(result, field)


def race_accuracy(state: EmbeddingSet) -> Tensor:
    """Accuracy of each race ``(G,)`` (mean over the 10 folds)."""
    return _per_race(state, "accuracy")


def race_val(state: EmbeddingSet) -> Tensor:
    """VAL@FAR=1e-3 of each race ``(G,)`` (mean over the 10 folds)."""
    return _per_race(state, "val")


def race_pairs(state: EmbeddingSet) -> Tensor:
    """Pairs of each race ``(G,)`` (nan without a pair list)."""
    result = rfw_val(state)
    return torch.full((state.num_groups,), NAN, dtype=torch.float64) if result is None else result.pairs.double()


def _over_races(state: EmbeddingSet, field: str) -> Tensor:
    result = rfw_val(state)
    if result is None or not result.in_protocol.any():
        return torch.tensor(NAN, dtype=torch.float64)
    return getattr(result, field)[result.in_protocol]


def mean_accuracy(state: EmbeddingSet) -> Tensor:
    """Mean of the race accuracies."""
    return _over_races(state, "accuracy").mean()


def accuracy_std(state: EmbeddingSet) -> Tensor:
    """Standard deviation (ddof 1) of the race accuracies (nan with fewer than 2 races)."""
    values = _over_races(state, "accuracy")
    return values.std(correction=1) if values.numel() > 1 else torch.tensor(NAN, dtype=torch.float64)


def mean_val(state: EmbeddingSet) -> Tensor:
    """Mean of the race VAL@FAR=1e-3."""
    return _over_races(state, "val").mean()


RFW_VAL_METRICS = tuple(
    Metric(name, compute, section, higher, description, task="verification", column=column)
    for name, compute, section, higher, description, column in (
        ("rfw_val_acc", mean_accuracy, "overall", True, "RFW protocol: mean over races of the 10-fold pair accuracy", None),
        ("rfw_val_std", accuracy_std, "fairness", False, "RFW protocol: std (ddof 1) of the race accuracies", None),
        ("rfw_val_at_far", mean_val, "overall", True, "RFW protocol: mean over races of VAL@FAR=1e-3 (10 folds)", None),
        ("rfw_val_race_acc", race_accuracy, "groups", True, "RFW protocol: 10-fold pair accuracy of each race", "val_acc"),
        ("rfw_val_race_val", race_val, "groups", True, "RFW protocol: VAL@FAR=1e-3 of each race", "val_at_far"),
        ("rfw_val_pairs", race_pairs, "groups", True, "RFW protocol: pairs of each race (race of the first image)",
         "val_pairs"),
    )
)
