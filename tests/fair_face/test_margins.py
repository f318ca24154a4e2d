"""Margin heads: CosFace and ArcFace logits on hand-made cosines, including ArcFace's fallback."""

import math

import pytest
import torch
import torch.nn.functional as F

from fair_face.margins import ArcFaceHead, CosFaceHead, MarginParams, SoftmaxHead, build_margin_head, margin_loss

COS = torch.tensor([[0.8, 0.1, -0.2], [0.3, -0.95, 0.5]])
LABELS = torch.tensor([0, 1])


def test_cosine_scores_are_cosines_of_embeddings_and_class_weights():
    head = CosFaceHead(2, 3, s=10, m=0.2)
    head.weight.data = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    scores = head(torch.tensor([[1.0, 0.0], [0.0, -4.0]]))
    assert torch.allclose(scores, torch.tensor([[1.0, 0.0, 2**-0.5], [0.0, -1.0, -(2**-0.5)]]))


def test_cosface_subtracts_the_margin_at_the_label_only():
    head = CosFaceHead(2, 3, s=64, m=0.35)
    logits = head.logits(COS, LABELS)
    expected = 64 * torch.tensor([[0.8 - 0.35, 0.1, -0.2], [0.3, -0.95 - 0.35, 0.5]])
    assert torch.allclose(logits, expected)
    extra = torch.tensor([0.1, -0.05])  # MixFairFace's per-sample identity bias joins the margin
    logits = head.logits(COS, LABELS, extra)
    assert logits[0, 0] == pytest.approx(64 * (0.8 - 0.45)) and logits[1, 1] == pytest.approx(64 * (-0.95 - 0.30))
    assert torch.equal(logits[0, 1:], 64 * COS[0, 1:])


def test_arcface_adds_the_angle_and_falls_back_past_pi_minus_m():
    m, s = 0.5, 64.0
    head = ArcFaceHead(2, 3, s=s, m=m)
    logits = head.logits(COS, LABELS)
    # row 0: theta = acos(0.8) < pi - m: cos(theta + m)
    assert logits[0, 0].item() == pytest.approx(s * math.cos(math.acos(0.8) + m), rel=1e-5)
    # row 1: cos = -0.95 <= cos(pi - m) = -0.8776: insightface's fallback cos - sin(pi - m) m
    assert -0.95 <= math.cos(math.pi - m)
    assert logits[1, 1].item() == pytest.approx(s * (-0.95 - math.sin(math.pi - m) * m), rel=1e-5)
    assert torch.allclose(logits[0, 1:], s * COS[0, 1:]) and torch.allclose(logits[1, [0, 2]], s * COS[1, [0, 2]])


def test_arcface_fallback_keeps_the_target_logit_decreasing_in_theta():
    head = ArcFaceHead(2, 1, s=1.0, m=0.5)
    cos = torch.linspace(-1, 1, 401).unsqueeze(1)
    target = head.logits(cos, torch.zeros(401, dtype=torch.long)).squeeze(1)
    assert (target.diff() >= -1e-6).all()  # increasing in cos, i.e. decreasing in theta


def test_arcface_easy_margin_leaves_negative_cosines_alone():
    head = ArcFaceHead(2, 3, s=2.0, m=0.5, easy_margin=True)
    logits = head.logits(COS, LABELS)
    assert logits[1, 1].item() == pytest.approx(2 * -0.95)
    assert logits[0, 0].item() == pytest.approx(2 * math.cos(math.acos(0.8) + 0.5), rel=1e-5)


def test_softmax_head_is_linear_and_refuses_a_margin():
    head = SoftmaxHead(2, 3)
    e = torch.randn(4, 2)
    assert torch.allclose(head(e), e @ head.linear.weight.T + head.linear.bias)
    with pytest.raises(ValueError):
        head.logits(head(e), torch.zeros(4, dtype=torch.long), torch.zeros(4))


def test_margin_loss_is_cross_entropy_of_the_margin_logits():
    head = build_margin_head(MarginParams(head="cosface", s=30, m=0.4), 2, 3)
    loss = margin_loss(head, COS, LABELS)
    assert loss.item() == pytest.approx(F.cross_entropy(30 * (COS - 0.4 * F.one_hot(LABELS, 3)), LABELS).item(), rel=1e-6)
    assert isinstance(build_margin_head(MarginParams(head="arcface"), 2, 3), ArcFaceHead)
