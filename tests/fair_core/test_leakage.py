"""The leakage adversary against scikit-learn's logistic regression on the same folds."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fair_core.leakage import attribute_leakage, majority_share, stratified_folds


def _data(n=300, d=6, separation=1.0, groups=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randint(0, groups, (n,), generator=generator)
    x = torch.randn(n, d, generator=generator) * 3 + torch.randn(n, d, generator=generator)
    x[:, 0] += separation * g  # the group shows in one scaled direction
    return x, g


def test_folds_are_stratified_and_seeded():
    _, g = _data(groups=3)
    fold = stratified_folds(g, 5, seed=1)
    assert torch.equal(fold, stratified_folds(g, 5, seed=1))
    for k in range(5):
        share = torch.bincount(g[fold == k], minlength=3).float() / (fold == k).sum()
        assert torch.allclose(share, torch.bincount(g, minlength=3).float() / len(g), atol=0.03)


@pytest.mark.parametrize("groups", [2, 3])
def test_held_out_accuracy_matches_sklearn(groups):
    x, g = _data(separation=2.0, groups=groups)
    fold = stratified_folds(g, 5, seed=0)
    expected = []
    for k in range(5):
        train, test = (fold != k).numpy(), (fold == k).numpy()
        xn = x.double().numpy()
        mean, std = xn[train].mean(0), xn[train].std(0, ddof=1)
        # sklearn's C is the inverse of the summed-loss penalty: C = 1 / (l2 * n_train)
        model = LogisticRegression(C=1 / (1e-3 * train.sum()), max_iter=2000, tol=1e-10)
        model.fit((xn[train] - mean) / std, g.numpy()[train])
        expected.append(np.mean(model.predict((xn[test] - mean) / std) == g.numpy()[test]))
    assert attribute_leakage(x, g, folds=5, seed=0) == pytest.approx(np.mean(expected), abs=1 / 60)


def test_no_information_gives_about_the_majority_share_and_full_information_gives_one():
    x, g = _data(separation=0.0)
    assert abs(attribute_leakage(x, g) - majority_share(g)) < 0.1
    assert attribute_leakage(g[:, None].float() + 0.01 * torch.randn(len(g), 1), g) == 1.0


def test_within_class_leakage_is_the_size_weighted_mean_of_per_class_adversaries():
    x, g = _data(n=400, separation=2.0)
    labels = torch.arange(400) % 3 == 0  # a third in class 1
    labels = labels.long()
    per_class = [attribute_leakage(x[labels == c], g[labels == c]) for c in (0, 1)]
    sizes = [(labels == c).sum().item() for c in (0, 1)]
    expected = (sizes[0] * per_class[0] + sizes[1] * per_class[1]) / 400
    assert attribute_leakage(x, g, labels=labels) == pytest.approx(expected)
    # a group that only the class reveals (the group is the class for 90% of samples): read off the
    # class without the labels, at about the floor within a class
    generator = torch.Generator().manual_seed(1)
    classes = torch.randint(0, 2, (400,), generator=generator)
    flipped = torch.rand(400, generator=generator) < 0.1
    tied = torch.where(flipped, 1 - classes, classes)
    x_class = torch.cat([classes[:, None].float(), torch.randn(400, 2, generator=generator)], 1)
    assert attribute_leakage(x_class, tied) > 0.85
    assert abs(attribute_leakage(x_class, tied, labels=classes) - majority_share(tied, classes)) < 0.03
    assert majority_share(g, labels) == pytest.approx(sum(torch.bincount(g[labels == c]).max().item() for c in (0, 1)) / 400)
