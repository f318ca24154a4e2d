"""Method formulas against hand-computed values and direct loop-based computations."""

import math

import numpy as np
import pytest
import torch

from fair_core import DataInfo, FairDataset, SplitData
from fair_methods.bias_contrastive import bias_contrastive_loss
from fair_methods.bias_mimicking import mimicking_counts, mimicking_masks
from fair_methods.cells import cell_of, inverse_frequency_weights, resample_cells
from fair_methods.domain_independent import sum_of_log_softmax
from fair_methods.flac import flac_loss, pair_similarity
from fair_methods.resampling import Oversampling, Undersampling, Upweighting


def toy_dataset(cells: dict[tuple[int, int], int]) -> FairDataset:
    """A dataset with ``cells[(y, b)]`` samples per cell (images are irrelevant here)."""
    targets, groups = [], []
    for (y, b), n in cells.items():
        targets += [y] * n
        groups += [b] * n
    n = len(targets)
    split = SplitData(torch.zeros(n, 3, 2, 2), {"y": torch.tensor(targets), "b": torch.tensor(groups)},
                      {"y": ("c0", "c1"), "b": ("g0", "g1")})
    info = DataInfo("toy", "y", ("b",), ("c0", "c1"), ("g0", "g1"))
    return FairDataset(split, info)


CELLS = {(0, 0): 90, (0, 1): 10, (1, 0): 30, (1, 1): 70}


def test_cells_use_g_equals_y_plus_b_times_c():
    assert torch.bincount(cell_of(toy_dataset(CELLS))).tolist() == [90, 30, 10, 70]


def test_uw_weights_are_n_over_cell_size():
    dataset = toy_dataset(CELLS)
    weights = inverse_frequency_weights(cell_of(dataset))
    expected = {(0, 0): 200 / 90, (0, 1): 200 / 10, (1, 0): 200 / 30, (1, 1): 200 / 70}
    for i in range(len(dataset)):
        assert weights[i].item() == pytest.approx(expected[(int(dataset.targets[i]), int(dataset.groups[i]))])
    method = Upweighting(Upweighting.Params(), dataset.info)
    method.prepare_data(dataset, torch.Generator().manual_seed(0))
    torch.testing.assert_close(method.weights[dataset.rows], weights)


def test_uw_loss_is_the_weighted_mean_of_cross_entropies():
    dataset = toy_dataset(CELLS)
    method = Upweighting(Upweighting.Params(), dataset.info)
    method.prepare_data(dataset, torch.Generator().manual_seed(0))
    logits = torch.randn(4, 2)
    # rows 0-89 are cell (0, 0), 90-99 (0, 1), 100-129 (1, 0), 130-199 (1, 1)
    batch = {"image": logits, "target": torch.tensor([0, 0, 1, 1]), "index": torch.tensor([0, 95, 110, 199])}
    loss = method.compute_loss(lambda x: x, batch)
    ce = [-torch.log_softmax(logits[i], 0)[batch["target"][i]].item() for i in range(4)]
    w = [200 / 90, 200 / 10, 200 / 30, 200 / 70]
    assert loss.item() == pytest.approx(sum(c * wi for c, wi in zip(ce, w, strict=True)) / 4, rel=1e-5)


def test_us_and_os_cell_counts():
    dataset = toy_dataset(CELLS)
    generator = torch.Generator().manual_seed(0)
    under = Undersampling(Undersampling.Params(), dataset.info).prepare_data(dataset, generator).dataset
    assert under.cell_counts().tolist() == [[10, 10], [10, 10]]
    assert len(set(under.rows.tolist())) == 40  # without replacement
    over = Oversampling(Oversampling.Params(), dataset.info).prepare_data(dataset, generator).dataset
    assert over.cell_counts().tolist() == [[90, 90], [90, 90]]
    assert set(dataset.rows.tolist()) <= set(over.rows.tolist())  # every original sample kept
    assert resample_cells(cell_of(toy_dataset({(0, 0): 3, (1, 1): 5})), 4, generator).numel() == 8  # empty cells stay empty


def test_bm_linear_program_on_a_small_count_table():
    counts = np.array([[90, 10], [30, 70]])
    # head 0: p(b|0) = (0.9, 0.1); class 1 keeps t * p with t = min(30 / 0.9, 70 / 0.1) = 33.3 -> (30, 3.33)
    np.testing.assert_array_equal(mimicking_counts(counts, 0), [[90, 10], [30, 3]])
    # head 1: p(b|1) = (0.3, 0.7); class 0: t = min(90 / 0.3, 10 / 0.7) = 14.29 -> (4.29, 10)
    np.testing.assert_array_equal(mimicking_counts(counts, 1), [[4, 10], [30, 70]])
    three = np.array([[50, 30, 20], [10, 10, 80]])
    kept = mimicking_counts(three, 0)[1]  # p = (0.5, 0.3, 0.2); t = min(10/0.5, 10/0.3, 80/0.2) = 20
    np.testing.assert_array_equal(kept, [10, 6, 4])


def test_bm_masks_follow_the_counts():
    dataset = toy_dataset(CELLS)
    masks = mimicking_masks(dataset, torch.Generator().manual_seed(0))
    for head, expected in ((0, [[90, 10], [30, 3]]), (1, [[4, 10], [30, 70]])):
        for y in range(2):
            for b in range(2):
                cell = (dataset.targets == y) & (dataset.groups == b)
                assert masks[cell, head].sum().item() == expected[y][b]


def test_di_inference_sums_log_softmax_over_domain_blocks():
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0], [0.0, 3.0, 1.0, 1.0]])  # C = 2, B = 2: blocks [z_d0 | z_d1]
    scores = sum_of_log_softmax(logits, num_classes=2)

    def log_softmax(values):
        top = math.log(sum(math.exp(v) for v in values))
        return [v - top for v in values]

    for i, row in enumerate(logits.tolist()):
        d0, d1 = log_softmax(row[:2]), log_softmax(row[2:])
        assert scores[i].tolist() == pytest.approx([d0[0] + d1[0], d0[1] + d1[1]])
    # domain 0 prefers class 0 strongly, domain 1 mildly prefers class 1: the sum picks class 0
    assert scores.argmax(1).tolist() == [0, 1]


def test_bias_contrastive_loss_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(10, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
    biases = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0, 1, 1])
    tau = 0.07
    f = torch.nn.functional.normalize(features, dim=1).tolist()
    dot = [[sum(a * b for a, b in zip(fi, fj, strict=True)) / tau for fj in f] for fi in f]
    per_anchor = []
    for i in range(10):
        positives = [p for p in range(10) if p != i and labels[p] == labels[i] and biases[p] != biases[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(dot[i][a]) for a in range(10) if a != i))
        per_anchor.append(sum(dot[i][p] - log_denominator for p in positives) / len(positives))
    expected = -sum(per_anchor) / len(per_anchor)
    assert bias_contrastive_loss(features, labels, biases, tau).item() == pytest.approx(expected, rel=1e-5)


def test_flac_loss_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    features, bias_features = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    d = 0.5

    def similarity(x):
        x = torch.nn.functional.normalize(x, dim=1).tolist()
        return [[1 / (1 + math.sqrt(sum((a - b) ** 2 for a, b in zip(xi, xj, strict=True)) + 1e-6) ** d) for xj in x] for xi in x]

    sp, sf = similarity(bias_features), similarity(features)
    th = (max(map(max, sp)) + min(map(min, sp))) / 2
    mask = [[(labels[i] == labels[j] and sp[i][j] < th) or (labels[i] != labels[j] and sp[i][j] > th) for j in range(8)]
            for i in range(8)]
    terms = []
    for i in range(8):
        pp_sum = sum(1 - sp[i][j] for j in range(8) if mask[i][j])
        pf_sum = sum(sf[i][j] for j in range(8) if mask[i][j])
        for j in range(8):
            if mask[i][j]:
                pp, pf = (1 - sp[i][j]) / pp_sum, sf[i][j] / pf_sum
                terms.append((pp - pf) * (math.log(pp) - math.log(pf)))
    assert flac_loss(features, bias_features, labels, d).item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert pair_similarity(features, d).diagonal().min() > 0.96  # self-similarity ~ 1 / (1 + 1e-3^0.5)


def test_minimising_the_flac_loss_suppresses_the_bias_in_feature_similarities():
    """Gradient descent on the FLAC loss alone (features as free parameters, a bias network that
    separates the two groups) pulls same-class pairs of different groups together and pushes
    different-class pairs of the same group apart: the direction of the paper's mechanism."""
    g = torch.Generator().manual_seed(0)
    n = 64
    labels = torch.randint(0, 2, (n,), generator=g)
    groups = torch.where(torch.rand(n, generator=g) < 0.9, labels, 1 - labels)  # 90% bias-aligned
    bias_features = 3 * torch.nn.functional.one_hot(groups, 2).float() + 0.1 * torch.randn(n, 2, generator=g)
    features = torch.randn(n, 16, generator=g).requires_grad_()
    optimizer = torch.optim.Adam([features], lr=0.05)
    same_class, same_group = labels[:, None] == labels[None, :], groups[:, None] == groups[None, :]

    def mean_similarity(pairs):
        return pair_similarity(features.detach(), 0.5)[pairs].mean().item()

    before = mean_similarity(same_class & ~same_group), mean_similarity(~same_class & same_group)
    for _ in range(300):
        loss = flac_loss(features, bias_features, labels, 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_similarity(same_class & ~same_group), mean_similarity(~same_class & same_group)
    assert after[0] > before[0] + 0.3 and after[1] < before[1], (before, after)
