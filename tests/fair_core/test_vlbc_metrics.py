"""VLBC's metrics (D'Inca et al., WACV 2024): macro-F1, the signed accuracy difference, per-cell
accuracy (their EOpp) and its mean spread over classes (their DEO), against hand-computed values,
scikit-learn, a direct transcription of their evaluation code, and summed counts."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from fair_core import metrics as M
from fair_core.report import summarize

NEW = ("macro_f1", "signed_accuracy_difference", "mean_class_accuracy_spread")


def binary_example():
    # group 0: y=[1,1,0,0] p=[1,0,0,0]; group 1: y=[1,1,0,0,0,1] p=[1,1,1,0,0,1]
    targets = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0, 0, 1])
    preds = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0, 0, 1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    return preds, targets, groups


def three_class_example():
    # group 0: y=[0,0,1,1,2] p=[0,1,1,1,0]; group 1: y=[0,0,0,1,1,1] p=[0,0,2,1,0,0] (no class 2 in group 1)
    targets = torch.tensor([0, 0, 1, 1, 2, 0, 0, 0, 1, 1, 1])
    preds = torch.tensor([0, 1, 1, 1, 0, 0, 0, 2, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    return preds, targets, groups


def random_inputs(seed: int, n: int, num_groups: int, num_classes: int):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (n,), generator=g)
    groups = torch.randint(0, num_groups, (n,), generator=g)
    flip = torch.rand(n, generator=g) < (0.1 + 0.5 * groups / max(num_groups - 1, 1))
    preds = torch.where(flip, torch.randint(0, num_classes, (n,), generator=g), targets)
    return preds, targets, groups


def vlbc_reference(y: np.ndarray, p: np.ndarray, s: np.ndarray, num_classes: int) -> dict[str, float]:
    """VLBC's utils/trainer.py (_run_epoch, _compute_accuracy) for a binary protected attribute,
    written out with numpy (their values are x100 for F1 and acc_diff; fractions here)."""
    acc_pos = accuracy_score(y[s == 1], p[s == 1])
    acc_neg = accuracy_score(y[s == 0], p[s == 0])
    eopp = np.zeros((2, num_classes))
    for i in range(2):  # protected value
        for j in range(num_classes):  # class
            cell = (s == i) & (y == j)
            eopp[i, j] = (p[cell] == y[cell]).sum() / cell.sum()
    delta = eopp.max(0) - eopp.min(0)
    return {"f1": f1_score(y, p, average="macro", zero_division=1), "acc_diff": acc_pos - acc_neg,
            "mean_eopp": float(delta.mean())}


# --------------------------------------------------------------------------- hand-computed
def test_binary_hand_computed():
    counts = M.group_confusion(*binary_example(), 2, 2)
    assert counts.tolist() == [[[2, 0], [1, 1]], [[2, 1], [0, 3]]]
    # cells (g, y): g0 y0 2/2, g0 y1 1/2, g1 y0 2/3, g1 y1 3/3
    np.testing.assert_allclose(M.cell_accuracy(counts).numpy(), [[1, 1 / 2], [2 / 3, 1]])
    # pooled: class 1 TP 4 FP 1 FN 1, class 0 TP 4 FP 1 FN 1 -> F1 8/10 each
    assert M.macro_f1(counts).item() == pytest.approx(0.8)
    # acc g0 3/4, g1 5/6: group 1 minus group 0
    assert M.signed_accuracy_difference(counts).item() == pytest.approx(5 / 6 - 3 / 4)
    # class 0 spread 1 - 2/3, class 1 spread 1 - 1/2: both classes count (VLBC's DEO) ...
    assert M.mean_class_accuracy_spread(counts).item() == pytest.approx((1 / 3 + 1 / 2) / 2)
    # ... unlike `deo`, the positive class's TPR gap only; for a binary target it is `aaod`
    assert M.equal_opportunity_difference(counts).item() == pytest.approx(1 / 2)
    assert M.mean_class_accuracy_spread(counts).item() == pytest.approx(M.average_absolute_odds_difference(counts).item())


def test_binary_sign_follows_the_groups():
    preds, targets, groups = binary_example()
    swapped = M.group_confusion(preds, targets, 1 - groups, 2, 2)
    assert M.signed_accuracy_difference(swapped).item() == pytest.approx(3 / 4 - 5 / 6)
    assert M.mean_class_accuracy_spread(swapped).item() == pytest.approx(5 / 12)


def test_three_class_hand_computed():
    counts = M.group_confusion(*three_class_example(), 3, 2)
    cells = M.cell_accuracy(counts).numpy()
    np.testing.assert_allclose(cells[0], [1 / 2, 1, 0])
    np.testing.assert_allclose(cells[1, :2], [2 / 3, 1 / 3])
    assert np.isnan(cells[1, 2])  # no class-2 sample in group 1
    # pooled F1: class 0 TP 3, support 5, predicted 6 -> 6/11; class 1 TP 3, support 5, predicted 4
    # -> 6/9; class 2 TP 0, support 1, predicted 1 -> 0
    assert M.macro_f1(counts).item() == pytest.approx((6 / 11 + 6 / 9 + 0) / 3)
    # acc g0 3/5, g1 3/6
    assert M.signed_accuracy_difference(counts).item() == pytest.approx(3 / 6 - 3 / 5)
    # spreads: class 0 2/3 - 1/2, class 1 1 - 1/3; class 2 is in one group only: skipped
    assert M.mean_class_accuracy_spread(counts).item() == pytest.approx((1 / 6 + 2 / 3) / 2)


def test_three_groups_have_no_signed_difference():
    preds, targets, groups = three_class_example()
    groups = groups.clone()
    groups[-2:] = 2
    counts = M.group_confusion(preds, targets, groups, 3, 3)
    assert M.signed_accuracy_difference(counts).isnan()
    assert M.signed_accuracy_difference(torch.stack([counts, counts])).isnan().all()
    assert not M.mean_class_accuracy_spread(counts).isnan()  # any number of groups


def test_undefined_cases_are_nan():
    # group 0 empty: no difference; every class in one group only: no spread
    counts = M.group_confusion(torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([1, 1]), 2, 2)
    assert M.signed_accuracy_difference(counts).isnan()
    assert M.mean_class_accuracy_spread(counts).isnan()
    assert M.macro_f1(torch.zeros(2, 2, 2)).isnan()


# --------------------------------------------------------------------------- references
def test_macro_f1_matches_scikit_learn_on_the_examples():
    for (preds, targets, groups), c in ((binary_example(), 2), (three_class_example(), 3)):
        counts = M.group_confusion(preds, targets, groups, c, 2)
        expected = f1_score(targets.numpy(), preds.numpy(), average="macro", zero_division=0)
        assert M.macro_f1(counts).item() == pytest.approx(expected)


def test_macro_f1_leaves_out_a_class_neither_targeted_nor_predicted():
    preds, targets, groups = three_class_example()
    counts = M.group_confusion(preds, targets, groups, 5, 2)  # classes 3 and 4 never occur
    y, p = targets.numpy(), preds.numpy()
    assert M.macro_f1(counts).item() == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert M.macro_f1(counts).item() != pytest.approx(f1_score(y, p, average="macro", zero_division=0, labels=range(5)))
    # a class predicted but never a target counts, with F1 0
    counts = M.group_confusion(torch.tensor([0, 1, 3]), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 4, 2)
    y, p = np.array([0, 1, 1]), np.array([0, 1, 3])
    assert M.macro_f1(counts).item() == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert M.macro_f1(counts).item() == pytest.approx((1 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize("seed,num_classes", [(0, 2), (1, 2), (2, 3), (3, 5), (4, 10)])
def test_against_scikit_learn_and_vlbc_code_on_random_inputs(seed, num_classes):
    preds, targets, groups = random_inputs(seed, 3000, 2, num_classes)
    counts = M.group_confusion(preds, targets, groups, num_classes, 2)
    y, p, s = targets.numpy(), preds.numpy(), groups.numpy()
    assert M.macro_f1(counts).item() == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    reference = vlbc_reference(y, p, s, num_classes)
    assert M.macro_f1(counts).item() == pytest.approx(reference["f1"])
    assert M.signed_accuracy_difference(counts).item() == pytest.approx(reference["acc_diff"])
    assert M.mean_class_accuracy_spread(counts).item() == pytest.approx(reference["mean_eopp"])
    cells = M.cell_accuracy(counts)
    for g in range(2):
        for c in range(num_classes):
            cell = (s == g) & (y == c)
            assert cells[g, c].item() == pytest.approx((p[cell] == c).mean())
    if num_classes > 2:  # the one-vs-rest TPR of every class is the cell accuracy, transposed
        torch.testing.assert_close(M.group_true_positive_rate(counts), cells.transpose(0, 1))


# --------------------------------------------------------------------------- summable counts
@pytest.mark.parametrize("num_classes,num_groups", [(2, 2), (3, 2), (4, 3)])
def test_counts_of_two_halves_sum_to_the_whole(num_classes, num_groups):
    preds, targets, groups = random_inputs(5 + num_classes, 1001, num_groups, num_classes)
    whole = M.group_confusion(preds, targets, groups, num_classes, num_groups)
    first = M.group_confusion(preds[:400], targets[:400], groups[:400], num_classes, num_groups)
    second = M.group_confusion(preds[400:], targets[400:], groups[400:], num_classes, num_groups)
    summed = first + second
    assert torch.equal(summed, whole)
    for fn in (M.macro_f1, M.signed_accuracy_difference, M.mean_class_accuracy_spread, M.cell_accuracy):
        torch.testing.assert_close(fn(summed), fn(whole), equal_nan=True)
    state_a, state_b = M.FairnessMetrics(num_classes, num_groups), M.FairnessMetrics(num_classes, num_groups)
    state_a.update(preds[:400], targets[:400], groups[:400])
    state_b.update(preds[400:], targets[400:], groups[400:])
    state_a.sync(lambda t: t + state_b.counts)
    registered = [m for m in M.BUILTIN_METRICS if m.name in NEW]
    values = state_a.compute(registered)
    assert values["macro_f1"] == pytest.approx(M.macro_f1(whole).item())
    assert values["mean_class_accuracy_spread"] == pytest.approx(M.mean_class_accuracy_spread(whole).item())


# --------------------------------------------------------------------------- registration and report
def test_registered_with_their_direction_and_section():
    from fair_core.plugins import get_registry

    registry = get_registry()
    expected = {"macro_f1": ("overall", True), "signed_accuracy_difference": ("fairness", False),
                "mean_class_accuracy_spread": ("fairness", False)}
    for name, (section, higher) in expected.items():
        entry = registry.get("metrics", name, "eval.metrics")
        assert entry.package == "fair-core"
        metric = entry.obj
        assert (metric.section, metric.higher_is_better, metric.task) == (section, higher, "classification")
    assert registry.get("metrics", "deo", "eval.metrics").obj.compute is M.equal_opportunity_difference  # kept


def test_summarize_reports_them_with_bootstrap_intervals():
    counts = M.group_confusion(*binary_example(), 2, 2)
    info = SimpleNamespace(group_names=["a", "b"])
    result = summarize(counts, info, M.BUILTIN_METRICS, bootstrap=200, confidence=0.9, seed=0)
    assert result["overall"]["macro_f1"] == pytest.approx(0.8)
    assert result["fairness"]["signed_accuracy_difference"] == pytest.approx(1 / 12)
    assert result["fairness"]["mean_class_accuracy_spread"] == pytest.approx(5 / 12)
    for name in NEW:  # the batched bootstrap replicates are evaluated too
        lo, hi = result["intervals"][name]
        assert lo is not None and hi is not None and lo <= hi
    assert result["fairness"]["deo"] == pytest.approx(1 / 2)
