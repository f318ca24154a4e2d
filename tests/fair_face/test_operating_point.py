"""Verification at one operating point: block-wise computation against a dense reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import dense_operating_point
from fair_core.tasks import EmbeddingSet
from fair_core.tasks.verification import VerificationParams
from fair_face import operating_point as op
from fair_face.plugin import VERIFICATION_METRICS


def planted(n_identities=60, images=5, dim=16, seed=0):
    """Embeddings near one random centre per identity; identities in 2 groups, group 1 noisier."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_identities, dim, generator=generator), dim=1)
    identities = torch.arange(n_identities).repeat_interleave(images)
    groups = (identities % 2 == 1).long()
    noise = torch.where(groups == 1, 0.9, 0.35).unsqueeze(1)
    embeddings = F.normalize(centres[identities] + noise * torch.randn(identities.numel(), dim, generator=generator) / dim**0.5, dim=1)
    return embeddings, identities, groups


def dense_reference(embeddings, identities, groups, fpr):
    """The same quantities from the full N x N matrices (what the block-wise code must equal)."""
    threshold, accepted, same, itself = dense_operating_point(embeddings, identities, fpr)
    positive = same & ~itself
    tpr = [(accepted & positive)[groups == g].sum() / positive[groups == g].sum() for g in (0, 1)]
    fpr_g = [(accepted & ~same)[groups == g].sum() / (~same)[groups == g].sum() for g in (0, 1)]
    total_tpr = (accepted & positive).sum() / positive.sum()
    return threshold, torch.stack(tpr).double(), torch.stack(fpr_g).double(), total_tpr.double()


def state(embeddings, identities, groups, fpr, block_size):
    params = VerificationParams(fpr=fpr, block_size=block_size)
    return EmbeddingSet(embeddings, identities, groups, torch.arange(identities.numel()), ("A", "B"), params)


@pytest.mark.parametrize("fpr", [1e-3, 1e-2])
def test_block_wise_operating_point_equals_the_dense_computation(fpr):
    embeddings, identities, groups = planted()
    threshold, tpr, fpr_g, total = dense_reference(embeddings, identities, groups, fpr)
    for block_size in (1, 7, 64, 10_000):  # 10_000: one block
        s = state(embeddings, identities, groups, fpr, block_size)
        point = op.operating_point(s)
        assert point.threshold == pytest.approx(threshold, abs=1e-6)
        torch.testing.assert_close(op.group_true_positive_rate(s), tpr)
        torch.testing.assert_close(op.group_false_positive_rate(s), fpr_g)
        torch.testing.assert_close(op.true_positive_rate(s), total)


def test_the_achieved_rate_is_the_target_and_self_matches_are_not_positives():
    embeddings, identities, groups = planted()
    s = state(embeddings, identities, groups, 1e-2, 50)
    point = op.operating_point(s)
    negatives = (point.fp + point.tn).sum().item()
    assert point.fp.sum().item() == math.ceil(1e-2 * negatives) - 1  # strictly above the k-th largest
    assert torch.all(point.tp + point.fn == 4)  # 5 images an identity: 4 genuine partners each


def test_the_noisier_group_has_the_lower_tpr_and_the_metrics_report_it():
    embeddings, identities, groups = planted()
    s = state(embeddings, identities, groups, 1e-3, 64)
    rates = op.group_true_positive_rate(s)
    assert rates[0] > rates[1]
    values = {m.name: m.compute(s) for m in VERIFICATION_METRICS}
    assert values["tpr_gap"].item() == pytest.approx((rates[0] - rates[1]).item())
    assert values["worst_group_tpr"].item() == pytest.approx(rates[1].item())
    fpr_g = op.group_false_positive_rate(s)
    assert values["fpr_ratio"].item() == pytest.approx((fpr_g.max() / fpr_g.min()).item())
    assert torch.equal(values["group_tpr"], rates)


def test_one_identity_has_no_negatives():
    embeddings = F.normalize(torch.randn(4, 8), dim=1)
    s = state(embeddings, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1e-3, 8)
    assert math.isnan(op.operating_point(s).threshold)
