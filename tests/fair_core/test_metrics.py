"""Fairness metrics: against fairlearn on random inputs, and against hand-computed values."""

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from fair_core import metrics as M


def random_inputs(seed: int, n: int, num_groups: int, num_classes: int = 2):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=g)
    groups = torch.randint(0, num_groups, (n,), generator=g)
    # predictions that depend on the group, so that the differences are not all ~0
    flip = torch.rand(n, generator=g) < (0.1 + 0.5 * groups / max(num_groups - 1, 1))
    preds = torch.where(flip, torch.randint(0, num_classes, (n,), generator=g), targets)
    return preds, targets, groups


@pytest.mark.parametrize("seed,num_groups", [(0, 2), (1, 3), (2, 8), (3, 32)])
def test_binary_metrics_match_fairlearn(seed, num_groups):
    preds, targets, groups = random_inputs(seed, 4000, num_groups)
    counts = M.group_confusion(preds, targets, groups, 2, num_groups)
    y, p, s = targets.numpy(), preds.numpy(), groups.numpy()
    assert M.accuracy(counts).item() == pytest.approx(accuracy_score(y, p))
    assert M.balanced_accuracy(counts).item() == pytest.approx(balanced_accuracy_score(y, p))
    assert M.statistical_parity_difference(counts).item() == pytest.approx(demographic_parity_difference(y, p, sensitive_features=s))
    assert M.equal_opportunity_difference(counts).item() == pytest.approx(equal_opportunity_difference(y, p, sensitive_features=s))
    assert M.equalized_odds_difference(counts).item() == pytest.approx(equalized_odds_difference(y, p, sensitive_features=s))
    frame = MetricFrame(metrics={"acc": accuracy_score, "tpr": true_positive_rate, "fpr": false_positive_rate},
                        y_true=y, y_pred=p, sensitive_features=s)
    by_group = frame.by_group
    np.testing.assert_allclose(M.group_accuracy(counts).numpy(), by_group["acc"].to_numpy())
    np.testing.assert_allclose(M.group_true_positive_rate(counts).numpy(), by_group["tpr"].to_numpy())
    np.testing.assert_allclose(M.group_false_positive_rate(counts).numpy(), by_group["fpr"].to_numpy())
    selection = MetricFrame(metrics=selection_rate, y_true=y, y_pred=p, sensitive_features=s).by_group.to_numpy()
    np.testing.assert_allclose(M.group_selection_rate(counts).numpy(), selection)
    assert M.accuracy_gap(counts).item() == pytest.approx(frame.difference()["acc"])
    assert M.worst_group_accuracy(counts).item() == pytest.approx(frame.group_min()["acc"])
    aaod = 0.5 * (frame.difference()["tpr"] + frame.difference()["fpr"])
    assert M.average_absolute_odds_difference(counts).item() == pytest.approx(aaod)


def test_multiclass_metrics_average_one_vs_rest_over_classes():
    preds, targets, groups = random_inputs(7, 3000, 3, num_classes=4)
    counts = M.group_confusion(preds, targets, groups, 4, 3)
    y, p, s = targets.numpy(), preds.numpy(), groups.numpy()
    spd, deo, eod = [], [], []
    for c in range(4):
        yc, pc = (y == c).astype(int), (p == c).astype(int)
        spd.append(demographic_parity_difference(yc, pc, sensitive_features=s))
        deo.append(equal_opportunity_difference(yc, pc, sensitive_features=s))
        eod.append(equalized_odds_difference(yc, pc, sensitive_features=s))
    assert M.statistical_parity_difference(counts).item() == pytest.approx(np.mean(spd))
    assert M.equal_opportunity_difference(counts).item() == pytest.approx(np.mean(deo))
    assert M.equalized_odds_difference(counts).item() == pytest.approx(np.mean(eod))
    assert M.balanced_accuracy(counts).item() == pytest.approx(balanced_accuracy_score(y, p))


def test_hand_computed_binary_example():
    # group 0: y=[1,1,0,0] p=[1,0,0,0]; group 1: y=[1,1,0,0,0,1] p=[1,1,1,0,0,1]
    targets = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0, 0, 1])
    preds = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 0, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    counts = M.group_confusion(preds, targets, groups, 2, 2)
    assert counts.tolist() == [[[2, 0], [1, 1]], [[2, 1], [0, 3]]]
    # acc: g0 3/4, g1 5/6; TPR: g0 1/2, g1 1; FPR: g0 0, g1 1/3; SR: g0 1/4, g1 4/6
    assert M.accuracy(counts).item() == pytest.approx(8 / 10)
    assert M.accuracy_gap(counts).item() == pytest.approx(5 / 6 - 3 / 4)
    assert M.worst_group_accuracy(counts).item() == pytest.approx(3 / 4)
    assert M.worst_cell_accuracy(counts).item() == pytest.approx(1 / 2)
    assert M.statistical_parity_difference(counts).item() == pytest.approx(4 / 6 - 1 / 4)
    assert M.equal_opportunity_difference(counts).item() == pytest.approx(1 / 2)
    assert M.equalized_odds_difference(counts).item() == pytest.approx(1 / 2)
    assert M.average_absolute_odds_difference(counts).item() == pytest.approx(0.5 * (1 / 2 + 1 / 3))


def test_empty_groups_are_ignored_and_all_empty_is_nan():
    counts = M.group_confusion(torch.tensor([1, 0]), torch.tensor([1, 1]), torch.tensor([0, 2]), 2, 3)
    assert M.group_accuracy(counts)[1].isnan()
    assert M.accuracy_gap(counts).item() == pytest.approx(1.0)
    assert M.accuracy(torch.zeros(2, 2, 2)).isnan()
    # no negatives anywhere: FPR undefined in every group, TPR still defines EOD
    assert M.equalized_odds_difference(counts).item() == pytest.approx(1.0)


def test_scores_are_argmaxed_and_leading_batch_dims_work():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    counts = M.group_confusion(scores, torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1]), 2, 2)
    assert counts.sum() == 3 and M.accuracy(counts).item() == pytest.approx(1 / 3)
    stacked = torch.stack([counts, counts])
    assert M.accuracy(stacked).shape == (2,)
    assert M.equalized_odds_difference(stacked).shape == (2,)


def test_intersectional_groups_are_mixed_radix():
    attrs = torch.tensor([[0, 0], [0, 2], [1, 0], [1, 2]])
    assert M.intersect_groups(attrs, [2, 3]).tolist() == [0, 2, 3, 5]


def test_counts_are_summable_like_a_distributed_gather():
    preds, targets, groups = random_inputs(11, 1000, 4)
    state_a, state_b = M.FairnessMetrics(2, 4), M.FairnessMetrics(2, 4)
    state_a.update(preds[:300], targets[:300], groups[:300])
    state_b.update(preds[300:], targets[300:], groups[300:])
    state_a.sync(lambda t: t + state_b.counts)
    assert torch.equal(state_a.counts, M.group_confusion(preds, targets, groups, 2, 4))


def test_bootstrap_keeps_totals_and_matches_sample_resampling():
    preds, targets, groups = random_inputs(5, 2000, 3)
    counts = M.group_confusion(preds, targets, groups, 2, 3)
    draws = M.bootstrap_counts(counts, 400, torch.Generator().manual_seed(0))
    assert draws.shape == (400, 3, 2, 2)
    assert torch.all(draws.sum((1, 2, 3)) == 2000)
    # the mean replicate is the observed table; the spread matches resampling samples
    torch.testing.assert_close(draws.mean(0), counts.double(), atol=3.0, rtol=0.05)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 2000, (400, 2000), generator=g)
    direct = torch.stack([M.accuracy(M.group_confusion(preds[i], targets[i], groups[i], 2, 3)) for i in idx])
    assert M.accuracy(draws).std().item() == pytest.approx(direct.std().item(), rel=0.2)
    lo, hi = M.bootstrap_confidence_interval(M.statistical_parity_difference, counts, 500)
    assert lo <= M.statistical_parity_difference(counts).item() <= hi
