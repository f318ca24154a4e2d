"""Segmentation metrics from one summed confusion matrix, against hand-computed values."""

import math

import pytest
import torch

from fair_core import metrics as M
from fair_core.metrics import SEGMENTATION_METRICS

IGNORE = 255

# image 0 (group 0): 2 x 3 pixels, one of them unlabelled (its prediction must not count)
LABELS_0 = torch.tensor([[0, 0, 1], [2, IGNORE, 1]])
PREDS_0 = torch.tensor([[0, 1, 1], [2, 0, 0]])
# confusion rows y, columns p: y0 -> p0, p1; y1 -> p1, p0; y2 -> p2
CONF_0 = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
# image 1 (group 1): 2 x 3 pixels of class 2, one predicted 0, and two unlabelled
LABELS_1 = torch.tensor([[2, 2, IGNORE], [2, 2, IGNORE]])
PREDS_1 = torch.tensor([[2, 2, 1], [2, 0, 1]])
CONF_1 = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 3]])


def by_name(name):
    return next(m for m in SEGMENTATION_METRICS if m.name == name)


def test_confusion_of_one_image_skips_the_ignore_index():
    conf = M.image_confusion(PREDS_0.unsqueeze(0), LABELS_0.unsqueeze(0), 3, IGNORE)
    assert torch.equal(conf[0], CONF_0)
    scores = torch.nn.functional.one_hot(PREDS_0, 3).permute(2, 0, 1).unsqueeze(0).float()  # (1, K, H, W)
    assert torch.equal(M.image_confusion(scores, LABELS_0.unsqueeze(0), 3, IGNORE)[0], CONF_0)


def test_confusion_per_group_sums_the_images_of_each_group():
    preds, labels = torch.stack([PREDS_0, PREDS_1]), torch.stack([LABELS_0, LABELS_1])
    conf = M.segmentation_confusion(preds, labels, 3, groups=torch.tensor([0, 1]), num_groups=2, ignore_index=IGNORE)
    assert torch.equal(conf, torch.stack([CONF_0, CONF_1]))
    both = M.segmentation_confusion(preds, labels, 3, ignore_index=IGNORE)
    assert torch.equal(both, (CONF_0 + CONF_1).unsqueeze(0))


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="ignore index"):
        M.image_confusion(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[0, 7]]]), 3, IGNORE)


def test_metrics_of_one_matrix_by_hand():
    # aAcc = 3 / 5; Acc = (1/2, 1/2, 1); IoU = (1/3, 1/3, 1)
    assert M.pixel_accuracy(CONF_0).item() == pytest.approx(0.6)
    assert M.class_accuracy(CONF_0).tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert M.class_iou(CONF_0).tolist() == pytest.approx([1 / 3, 1 / 3, 1.0])
    assert M.mean_accuracy(CONF_0).item() == pytest.approx(2 / 3)
    assert M.mean_iou(CONF_0).item() == pytest.approx(5 / 9)
    state = CONF_0.unsqueeze(0)  # one group
    # population std of (1/2, 1/2, 1): sqrt(1/18)
    assert by_name("class_accuracy_std").compute(state).item() == pytest.approx(math.sqrt(1 / 18))
    assert by_name("worst_class_iou").compute(state).item() == pytest.approx(1 / 3)
    assert by_name("worst_class_accuracy").compute(state).item() == pytest.approx(0.5)
    assert math.isnan(by_name("group_miou_gap").compute(state).item())  # one group: no gap


def test_undefined_classes_are_left_out_of_the_means():
    # group 1 alone: class 0 predicted once but never labelled (IoU 0, accuracy undefined),
    # class 1 neither labelled nor predicted (both undefined), class 2: IoU 3/4, accuracy 3/4
    assert M.class_iou(CONF_1)[0].item() == 0.0 and math.isnan(M.class_iou(CONF_1)[1].item())
    assert math.isnan(M.class_accuracy(CONF_1)[0].item())
    assert M.mean_iou(CONF_1).item() == pytest.approx(0.375)  # (0 + 3/4) / 2
    assert M.mean_accuracy(CONF_1).item() == pytest.approx(0.75)


def test_per_group_metrics_and_their_gaps_by_hand():
    state = torch.stack([CONF_0, CONF_1])
    assert by_name("group_mIoU").compute(state).tolist() == pytest.approx([5 / 9, 0.375])
    assert by_name("group_aAcc").compute(state).tolist() == pytest.approx([0.6, 0.75])
    assert by_name("group_miou_gap").compute(state).item() == pytest.approx(5 / 9 - 0.375)
    assert by_name("worst_group_miou").compute(state).item() == pytest.approx(0.375)
    # class fairness within each group: IoU (1/3, 1/3, 1) and (0, undefined, 3/4)
    assert by_name("group_worst_class_iou").compute(state).tolist() == pytest.approx([1 / 3, 0.0])
    assert by_name("group_class_iou_std").compute(state).tolist() == pytest.approx([math.sqrt(24 / 243), 0.375])
    assert by_name("group_worst_class_accuracy").compute(state).tolist() == pytest.approx([0.5, 0.75])
    # overall = the summed matrix [[1,1,0],[1,1,0],[1,0,4]]: aAcc 6/9, IoU (1/4, 1/3, 4/5)
    assert by_name("aAcc").compute(state).item() == pytest.approx(6 / 9)
    assert by_name("mIoU").compute(state).item() == pytest.approx((1 / 4 + 1 / 3 + 4 / 5) / 3)
    assert by_name("class_iou").compute(state).tolist() == pytest.approx([1 / 4, 1 / 3, 4 / 5])


def test_matrices_of_batches_add_up_to_the_matrix_of_all_images():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (6, 8, 8), generator=generator)
    labels[labels == 4] = IGNORE
    preds = torch.randint(0, 4, (6, 8, 8), generator=generator)
    whole = M.image_confusion(preds, labels, 4, IGNORE).sum(0)
    parts = M.image_confusion(preds[:2], labels[:2], 4, IGNORE).sum(0) + M.image_confusion(preds[2:], labels[2:], 4, IGNORE).sum(0)
    assert torch.equal(whole, parts)
    valid = labels != IGNORE
    assert M.pixel_accuracy(whole).item() == pytest.approx((preds[valid] == labels[valid]).double().mean().item())
