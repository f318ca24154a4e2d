"""RFW's `val` protocol (10 folds, grid threshold, VAL@FAR) and MixFairFace's instance-level
`val-inst` protocol (block-wise, against a dense N x N computation written here)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import dense_operating_point
from fair_core.tasks import EmbeddingSet
from fair_core.tasks.verification import VerificationParams
from fair_face import operating_point as op
from fair_face import rfw_val as rv
from fair_face import val_inst as vi


def embedding_set(embeddings, identities, groups, group_names, pairs=None, block_size=4096, instance_fpr=1e-5):
    return EmbeddingSet(embeddings, identities, groups, torch.arange(identities.numel()), tuple(group_names),
                        VerificationParams(block_size=block_size, instance_fpr=instance_fpr), pairs)


# --------------------------------------------------------------------------- rfw_val
@pytest.mark.parametrize("n", [10, 11, 19, 205, 6000, 6007])
def test_folds_are_sklearn_kfold_without_shuffling(n):
    from sklearn.model_selection import KFold

    theirs = [test.tolist() for _, test in KFold(10, shuffle=False).split(np.arange(n))]
    assert [list(range(n))[s] for s in rv.fold_slices(n)] == theirs
    with pytest.raises(ValueError):
        rv.fold_slices(9)


def test_threshold_grids_are_the_originals_aranges():
    assert torch.equal(rv.ACCURACY_THRESHOLDS, torch.from_numpy(np.arange(0, 10, 0.001)))
    assert torch.equal(rv.VAL_THRESHOLDS, torch.from_numpy(np.arange(0, 4, 0.001)))


def test_best_threshold_is_the_first_of_equally_good_ones_and_accepts_strictly_below():
    distances = torch.tensor([0.1, 0.5, 1.5, 2.0], dtype=torch.float64)
    same = torch.tensor([True, True, False, False])
    # every grid value in (0.5, 1.5] separates perfectly; 0.500 itself rejects d = 0.5 (d < t)
    assert rv.best_threshold(distances, same) == rv.ACCURACY_THRESHOLDS[501].item()
    assert rv.correct_decisions(distances, same, torch.tensor([0.5, 0.501, 1.5, 1.501], dtype=torch.float64)).tolist() \
        == [3, 4, 4, 3]


def unit_pairs(distances, generator, dtype=torch.float64):
    """Two 2-d unit vectors per squared distance d (angle arccos(1 - d / 2) apart), a random turn each."""
    distances = torch.as_tensor(distances, dtype=torch.float64)
    base = torch.rand(distances.numel(), generator=generator, dtype=torch.float64) * 2 * math.pi
    other = base + torch.arccos(1 - distances / 2)
    a = torch.stack([base.cos(), base.sin()], 1)
    b = torch.stack([other.cos(), other.sin()], 1)
    return a.to(dtype), b.to(dtype)


def race_pairs(race_distances, race_same, num_groups, generator, dtype=torch.float64, second_group=None):
    """An EmbeddingSet with images 2p and 2p + 1 forming pair p; the first image carries the race."""
    embeddings, groups, rows = [], [], []
    for race, (distances, same) in enumerate(zip(race_distances, race_same, strict=True)):
        a, b = unit_pairs(distances, generator, dtype)
        for i in range(len(distances)):
            first = sum(len(e) for e in embeddings) + 2 * i
            rows.append((first, first + 1, int(same[i])))
        embeddings.append(torch.stack([a, b], 1).reshape(-1, 2))
        groups += [g for _ in distances for g in (race, race if second_group is None else second_group)]
    embeddings = torch.cat(embeddings)
    identities = torch.arange(embeddings.shape[0])
    return embedding_set(embeddings, identities, torch.tensor(groups), [f"race{g}" for g in range(num_groups)],
                         torch.tensor(rows))


def test_rfw_val_on_hand_made_pairs_with_known_accuracies():
    generator = torch.Generator().manual_seed(0)
    # 20 pairs a race, alternating positive (d = 0.2005) and negative (d = 2.0005): folds of 2 pairs
    # (distances between grid values, so that rounding cannot move them across a threshold)
    same = [i % 2 == 0 for i in range(20)]
    clean = [0.2005 if s else 2.0005 for s in same]
    one_outlier = list(clean)
    one_outlier[4] = 3.0005  # a genuine pair far apart: wrong at every threshold that rejects the negatives
    two_outliers = list(one_outlier)
    two_outliers[10] = 3.0005
    # race 3 has no pair; every second image belongs to race 3: the race of a pair is its first image's
    state = race_pairs([clean, one_outlier, two_outliers], [same] * 3, 4, generator, second_group=3)
    values = {m.name: float(m.compute(state)) for m in rv.RFW_VAL_METRICS if m.section != "groups"}
    accuracy = rv.race_accuracy(state)
    assert accuracy[:3].tolist() == pytest.approx([1.0, 0.95, 0.90])  # one fold of 2 pairs half wrong: 1 - 0.5 / 10
    assert math.isnan(accuracy[3])
    assert rv.race_pairs(state).tolist()[:3] == [20, 20, 20] and rv.race_pairs(state)[3] == 0
    assert values["rfw_val_acc"] == pytest.approx(0.95)
    assert values["rfw_val_std"] == pytest.approx(0.05)  # sqrt(((0.05)^2 + 0 + (0.05)^2) / (3 - 1))
    # the training folds' best threshold is the first grid value above 0.2005 (outliers don't move it)
    distances = torch.tensor(one_outlier, dtype=torch.float64)
    _, chosen = rv.kfold_accuracy(distances, torch.tensor(same))
    assert chosen.tolist() == [rv.ACCURACY_THRESHOLDS[201].item()] * 10


def test_accuracy_std_uses_ddof_1():
    state = race_pairs([[0.2005, 2.0005] * 10] * 2, [[True, False] * 10] * 2, 2, torch.Generator().manual_seed(1))
    state.cache["rfw_val"] = rv.RaceVerification(torch.tensor([20, 20]), torch.tensor([0.9, 0.8], dtype=torch.float64),
                                                 torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert rv.accuracy_std(state).item() == pytest.approx(math.sqrt(2 * 0.05**2 / 1))


def far_fold():
    """One fold: 5 positives (3 at 0.5, 1 at 0.9991, 1 at 0.9993), 200 negatives (1 at 0.9995, 199 at 3.5)."""
    distances = [0.5, 0.5, 0.5, 0.9991, 0.9993] + [0.9995] + [3.5] * 199
    return distances, [True] * 5 + [False] * 200


def test_threshold_at_far_interpolates_between_the_bracketing_grid_values():
    distances, same = far_fold()
    train = torch.tensor(distances * 9, dtype=torch.float64), torch.tensor(same * 9)
    # FAR on 1800 negatives: 0 up to t = 0.999, 9 / 1800 = 5e-3 from t = 1.000 -> 1e-3 is a fifth of the step
    assert rv.threshold_at_far(*train) == pytest.approx(0.999 + 0.2 * 0.001, abs=1e-12)
    # a FAR equal to the target: the largest grid threshold with that FAR (d = 3.5 is rejected at t = 3.5)
    exact = torch.tensor([0.5] + [3.5] * 999, dtype=torch.float64)
    assert rv.threshold_at_far(exact, torch.zeros(1000, dtype=torch.bool)) == rv.VAL_THRESHOLDS[3500].item()
    # no grid threshold reaches the target: insightface's 0 (nothing accepted)
    assert rv.threshold_at_far(torch.full((10,), 4.5, dtype=torch.float64), torch.zeros(10, dtype=torch.bool)) == 0.0
    assert math.isnan(rv.threshold_at_far(torch.tensor([0.1], dtype=torch.float64), torch.tensor([True])))


def test_val_at_far_on_a_hand_made_race():
    distances, same = far_fold()
    values = rv.kfold_val(torch.tensor(distances * 10, dtype=torch.float64), torch.tensor(same * 10))
    assert values.tolist() == pytest.approx([0.8] * 10)  # t = 0.9992 accepts 0.5 x 3 and 0.9991, not 0.9993
    state = race_pairs([distances * 10], [same * 10], 1, torch.Generator().manual_seed(2))
    values = {m.name: float(m.compute(state)) for m in rv.RFW_VAL_METRICS if m.section != "groups"}
    assert values["rfw_val_at_far"] == pytest.approx(0.8)
    assert rv.race_val(state).tolist() == pytest.approx([0.8])


def test_without_pairs_every_rfw_val_metric_is_nan_and_a_race_with_few_pairs_makes_the_mean_nan():
    state = embedding_set(F.normalize(torch.randn(6, 4), dim=1), torch.arange(6), torch.zeros(6, dtype=torch.long), ["a"])
    for metric in rv.RFW_VAL_METRICS:
        assert torch.as_tensor(metric.compute(state)).isnan().all(), metric.name
    state = race_pairs([[0.2005, 2.0005] * 10, [0.2005, 2.0005] * 2], [[True, False] * 10, [True, False] * 2], 2,
                       torch.Generator().manual_seed(3))
    assert rv.race_accuracy(state)[0] == 1.0 and math.isnan(rv.race_accuracy(state)[1])
    assert math.isnan(rv.mean_accuracy(state))


# --------------------------------------------------------------------------- rfw_val_inst
def sign_embeddings(seed=0, n_identities=90, dim=64, groups=3):
    """Unit embeddings with entries +-1/8 (64-d): every dot product is a multiple of 1/64 and exact
    in any summation order, so the block-wise and dense computations must agree bit for bit, ties
    included. Identities of 1 to 6 images (a planted centre with some signs flipped); a noisier
    third of the identities; race = identity mod 3."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (n_identities,), generator=generator)
    sizes[:3] = 1  # at least 3 single-image identities
    identities = torch.arange(n_identities).repeat_interleave(sizes)
    centres = torch.randint(0, 2, (n_identities, dim), generator=generator) * 2 - 1
    flip_rate = torch.where(torch.arange(n_identities) % 3 == 2, 0.3, 0.15)[identities]
    flips = torch.rand(identities.numel(), dim, generator=generator) < flip_rate.unsqueeze(1)
    signs = torch.where(flips, -centres[identities], centres[identities])
    order = torch.randperm(identities.numel(), generator=generator)  # identities interleaved
    identities = identities[order] * 7 + 3  # ids need not be 0..I-1
    return signs[order].double() / 8, identities, (identities - 3) // 7 % groups


def dense_reference(embeddings, identities, groups, fpr, num_groups=3):
    """The original protocol's formulas on full N x N matrices, the self-match removed and the
    single-image identities left out."""
    threshold, accepted, same, itself = dense_operating_point(embeddings, identities, fpr)
    tp = (accepted & same & ~itself).sum(1)
    fn = (~accepted & same & ~itself).sum(1)
    fp = (accepted & ~same).sum(1)
    tn = (~accepted & ~same).sum(1)
    image_tpr, image_fpr = tp.double() / (tp + fn), fp.double() / (fp + tn)
    tpr, fpr_, race, intra, means, excluded = [], [], [], [], [], 0
    for identity in sorted(set(identities.tolist())):
        mask = identities == identity
        mean = F.normalize(embeddings[mask].mean(0), dim=0)
        means.append(mean)
        if mask.sum() < 2:
            excluded += 1
            continue
        tpr.append(image_tpr[mask].mean().item())
        fpr_.append(image_fpr[mask].mean().item())
        race.append(groups[mask.nonzero()[0, 0]].item())
        intra.append((embeddings[mask] @ mean).clamp(-1, 1).mean().item())
    means = torch.stack(means)
    between = (means @ means.T).clamp(-1, 1)
    between.fill_diagonal_(-math.inf)
    inter = between.topk(min(50, len(means) - 1), dim=1).values.mean(1).mean().item()

    def std(values):
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))  # ddof 0

    by_race = [[t for t, r in zip(tpr, race, strict=True) if r == g] for g in range(num_groups)]
    by_race_fpr = [[f for f, r in zip(fpr_, race, strict=True) if r == g] for g in range(num_groups)]
    return {"threshold": threshold, "tpr": tpr, "fpr": fpr_, "race": race, "excluded": excluded,
            "inst_tpr_std": std(tpr), "inst_fpr_std": std(fpr_), "inst_tpr_mean": sum(tpr) / len(tpr),
            "inst_fpr_mean": sum(fpr_) / len(fpr_), "inst_excluded": excluded, "inst_intra_sim": sum(intra) / len(intra),
            "inst_inter_sim": inter, "inst_group_tpr": [sum(v) / len(v) for v in by_race],
            "inst_group_tpr_std": [std(v) for v in by_race], "inst_group_fpr": [sum(v) / len(v) for v in by_race_fpr]}


@pytest.mark.parametrize("fpr", [1e-5, 1e-3, 3e-2])
def test_val_inst_equals_the_dense_computation_at_every_block_size(fpr, monkeypatch):
    embeddings, identities, groups = sign_embeddings()
    reference = dense_reference(embeddings, identities, groups, fpr)
    steps = ((1, 1 << 22, 1 << 25), (7, 1 << 22, 1 << 25), (7, 100, 100), (4096, 1 << 22, 1 << 25), (4096, 500, 2000))
    for block_size, topk_elements, filter_elements in steps:  # 100: one row per step (~300 images)
        monkeypatch.setattr(op, "TOPK_ELEMENTS", topk_elements)
        monkeypatch.setattr(op, "FILTER_ELEMENTS", filter_elements)
        rates = vi.instance_rates(embeddings, identities, groups, fpr, block_size)
        assert rates.threshold == reference["threshold"]
        assert rates.identity_tpr[rates.kept].tolist() == pytest.approx(reference["tpr"], abs=1e-15)
        assert rates.identity_fpr[rates.kept].tolist() == pytest.approx(reference["fpr"], abs=1e-15)
        assert rates.identity_group[rates.kept].tolist() == reference["race"]
        assert rates.excluded == reference["excluded"] >= 3


@pytest.mark.parametrize("fpr", [1e-5, 3e-2])  # 1e-5 of ~1e5 negatives is the largest one: no false positive
def test_val_inst_metrics_equal_the_dense_reference_and_share_one_computation(fpr, monkeypatch):
    embeddings, identities, groups = sign_embeddings(seed=1)
    reference = dense_reference(embeddings, identities, groups, fpr)
    calls = []
    compute = vi.instance_rates
    monkeypatch.setattr(vi, "instance_rates", lambda *args: calls.append(args) or compute(*args))
    for block_size in (1, 7, 4096):
        state = embedding_set(embeddings, identities, groups, ["a", "b", "c"], block_size=block_size, instance_fpr=fpr)
        for metric in vi.VAL_INST_METRICS:
            value = metric.compute(state)
            expected = reference[metric.name]
            if metric.section == "groups":
                assert value.tolist() == pytest.approx(expected, abs=1e-12), metric.name
            else:
                assert float(value) == pytest.approx(expected, abs=1e-12), metric.name
    assert len(calls) == 3  # once per evaluation, whatever the number of metrics
    assert reference["inst_tpr_std"] > 0 and (reference["inst_fpr_std"] > 0) == (fpr > 1e-3)
    assert reference["inst_group_tpr"][2] < min(reference["inst_group_tpr"][:2])  # the noisier race


def test_counts_on_float_embeddings_match_dense_counts():
    generator = torch.Generator().manual_seed(4)
    identities = torch.arange(60).repeat_interleave(5)
    centres = F.normalize(torch.randn(60, 32, generator=generator, dtype=torch.float64), dim=1)
    embeddings = F.normalize(centres[identities] + 0.15 * torch.randn(300, 32, generator=generator, dtype=torch.float64),
                             dim=1)
    for fpr in (1e-3, 1e-2):
        point = op.counts_at_fpr(embeddings, identities, fpr, 64)
        threshold, accepted, same, itself = dense_operating_point(embeddings, identities, fpr)
        positive = same & ~itself
        assert point.threshold == threshold
        assert torch.equal(point.tp, (accepted & positive).sum(1)) and torch.equal(point.fp, (accepted & ~same).sum(1))
        assert torch.all(point.tp + point.fn == 4) and torch.all(point.fp + point.tn == 295)


def test_single_image_identities_are_excluded_and_counted():
    embeddings, identities, groups = sign_embeddings(seed=2, n_identities=30)
    singles = int((torch.bincount(identities) == 1).sum())
    state = embedding_set(embeddings, identities, groups, ["a", "b", "c"])
    rates = vi.val_inst(state)
    assert vi.excluded_identities(state).item() == singles == int((~rates.kept).sum()) >= 3
    assert rates.identity_tpr[~rates.kept].isnan().all()
    assert not rates.identity_tpr[rates.kept].isnan().any()
    assert math.isfinite(vi.tpr_std(state)) and math.isfinite(vi.fpr_std(state))
    # the original keeps their 0/0 and its std is nan
    assert math.isnan(torch.cat([rates.identity_tpr[rates.kept], torch.tensor([math.nan])]).std(correction=0))


def test_the_threshold_is_the_exact_kth_largest_negative_and_strict():
    embeddings, identities, _ = sign_embeddings(seed=3, n_identities=40)
    sizes = torch.bincount(identities)
    negatives = op.negative_pairs(sizes[sizes > 0])
    k = math.ceil(2e-2 * negatives)
    values, rows = op.largest_negatives(embeddings, identities, k, 5)
    dense = embeddings @ embeddings.T
    dense[identities.unsqueeze(1) == identities.unsqueeze(0)] = -math.inf
    assert torch.equal(values, dense.flatten().sort(descending=True).values[:k])
    point = op.counts_at_fpr(embeddings, identities, 2e-2, 5)
    assert point.fp.sum().item() == int((dense > values[k - 1]).sum()) < k  # ties at the k-th are not accepted
    assert torch.equal(point.fp, (dense > values[k - 1]).sum(1))


@pytest.mark.parametrize("length", [0, 5, 64, 640, 1000])
def test_indices_above_finds_every_entry_above_the_bound(length):
    values = torch.randn(length, generator=torch.Generator().manual_seed(length))
    bound = torch.tensor(1.5)
    assert torch.equal(op.indices_above(values, bound).sort().values, (values > bound).nonzero().squeeze(1))
    values[-1:] = 9.0  # a hit in the last (partial) segment
    assert torch.equal(op.indices_above(values, bound).sort().values, (values > bound).nonzero().squeeze(1))


def test_without_negative_pairs_the_rates_are_nan():
    embeddings = F.normalize(torch.randn(5, 8), dim=1)
    state = embedding_set(embeddings, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), ["a"])
    assert math.isnan(vi.val_inst(state).threshold)
    assert math.isnan(vi.tpr_std(state)) and math.isnan(vi.tpr_mean(state)) and math.isnan(vi.inter_similarity(state))
    assert vi.excluded_identities(state).item() == 0
