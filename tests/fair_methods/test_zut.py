"""ZUT: the zero uniformity loss against hand computations, the zero image's path through the
model (one B+1 pass of the backbone, the head apart), combination with a base method, and
evaluation across processes."""

import json
import math
import os
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAIR, small_spec
from fair_core import FairDataset, FairError, Preprocessing, SplitData
from fair_core import metrics as M
from fair_core.data import DataInfo
from fair_core.hub import from_pretrained
from fair_core.models import Classifier, SmallEncoderDecoder, SmallEncoderDecoderParams
from fair_core.plugins import get_registry
from fair_core.runner import resolve
from fair_core.spec import parse_spec
from fair_core.tasks import ClassificationTask, SegmentationTask
from fair_methods.zut import ZUT, ZUTParams, classification_zul, segmentation_zul

CLS_INFO = DataInfo("toy", "y", ("g",), ("a", "b", "c", "d"), ("g0", "g1"))
SEG_INFO = DataInfo("toy", "mask", (), ("k0", "k1", "k2"), ("all",))


def zut(info=CLS_INFO, task=None, **params):
    return ZUT(ZUTParams(**params), info, task or ClassificationTask())


# --------------------------------------------------------------------------- the loss values
def test_classification_zul_is_the_unbiased_std_of_the_zero_images_logits():
    # logits 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14, unbiased variance 14 / 3
    assert classification_zul(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), 4).item() == pytest.approx(math.sqrt(14 / 3))
    # two 2-way blocks (a domain-independent head): std of (0, 2) = sqrt(2), of (1, 1) = 0; mean sqrt(2) / 2
    assert classification_zul(torch.tensor([[0.0, 2.0, 1.0, 1.0]]), 2).item() == pytest.approx(math.sqrt(2) / 2)
    assert classification_zul(torch.full((1, 4), 7.0), 4).item() == 0.0


def test_segmentation_zul_is_the_std_over_classes_of_the_spatial_mean_at_label_size():
    logits = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]],      # class 0: mean 4
                            [[0.0, 0.0], [0.0, 4.0]],      # class 1: mean 1
                            [[2.0, 2.0], [2.0, 2.0]]]])    # class 2: mean 2
    # means 4, 1, 2: mean 7/3, squared deviations (25 + 16 + 1) / 9 = 42 / 9, unbiased variance 21 / 9
    assert segmentation_zul(logits, (2, 2)).item() == pytest.approx(math.sqrt(21 / 9))
    resized = F.interpolate(logits, size=(5, 3), mode="bilinear", align_corners=False)
    assert segmentation_zul(logits, (5, 3)).item() == pytest.approx(resized.mean((-2, -1)).std(1).item())


# --------------------------------------------------------------------------- the zero image's path
class Recorder:
    """Records the inputs of every call of a module."""

    def __init__(self, module):
        self.inputs = []
        module.register_forward_hook(lambda m, args, out: self.inputs.append(args[0]))


def test_classification_backbone_sees_the_zero_image_in_front_of_the_batch_in_one_pass():
    method = zut()
    model = method.build_model(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 5, 4))
    encoder = Recorder(model.encoder)
    images = torch.randn(3, 3, 2, 2)
    batch = {"image": images, "target": torch.tensor([0, 1, 3]), "group": torch.zeros(3, dtype=torch.long)}
    loss = method.compute_loss(model.train(), batch)
    assert len(encoder.inputs) == 1 and encoder.inputs[0].shape[0] == 4  # B + 1 images, one pass
    assert torch.equal(encoder.inputs[0][0], torch.zeros(3, 2, 2)) and torch.equal(encoder.inputs[0][1:], images)
    with torch.no_grad():  # no BatchNorm or dropout: the pass is the same as separate calls
        model.eval()
        expected = F.cross_entropy(model(images), batch["target"]) + classification_zul(model(torch.zeros(1, 3, 2, 2)), 4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_zero_image_is_the_mean_colour_in_pixel_space():
    prep = Preprocessing(4, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean_colour = torch.tensor(prep.mean).view(3, 1, 1).expand(3, 4, 4)
    assert torch.allclose(prep.normalize(mean_colour), torch.zeros(3, 4, 4), atol=1e-7)


def test_segmentation_head_decodes_the_zero_features_apart_and_its_cross_entropy_is_dropped():
    method = zut(SEG_INFO, SegmentationTask())
    model = method.build_model(SmallEncoderDecoder(SmallEncoderDecoderParams(width=4)).build(3)).train()
    encoder, head = Recorder(model.encoder), Recorder(model.head)
    images = torch.randn(2, 3, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[0, 0] = 255
    batch = {"image": images, "mask": masks, "group": torch.zeros(2, dtype=torch.long)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    loss = method.compute_loss(model, batch)
    assert [x.shape[0] for x in encoder.inputs] == [3] and torch.equal(encoder.inputs[0][0], torch.zeros(3, 8, 8))
    assert [[m.shape[0] for m in maps] for maps in head.inputs] == [[1, 1, 1], [2, 2, 2]]  # zero image apart
    # the same loss by hand: one B+1 encoder pass, the head on each part, CE of the real images only
    model2 = method.build_model(SmallEncoderDecoder(SmallEncoderDecoderParams(width=4)).build(3)).train()
    model2.load_state_dict(state)
    torch.manual_seed(0)
    with torch.no_grad():
        maps = model2.encoder(torch.cat([torch.zeros(1, 3, 8, 8), images]))  # the hooks are on the whole model
        zero_logits = model2.head([m[:1] for m in maps])
        real_logits = model2.head([m[1:] for m in maps])
    expected = F.cross_entropy(real_logits, masks, ignore_index=255) + segmentation_zul(zero_logits, (8, 8))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("zero_running_stats", [False, True])
def test_the_zero_pass_updates_the_heads_running_statistics_only_when_asked(zero_running_stats):
    method = zut(SEG_INFO, SegmentationTask(), zero_running_stats=zero_running_stats)
    model = method.build_model(SmallEncoderDecoder(SmallEncoderDecoderParams(width=4)).build(3)).train()
    head_bns = [m for m in model.head.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []
    for bn in head_bns[:1]:
        bn.register_forward_hook(lambda m, args, out: seen.append(m.running_mean.clone()))
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8)), "group": torch.zeros(2, dtype=torch.long)}
    before = head_bns[0].running_mean.clone()
    method.compute_loss(model, batch)
    zero_pass_changed = not torch.equal(seen[0], before)  # after the first (zero) call of the head
    assert zero_pass_changed == zero_running_stats
    assert not torch.equal(seen[1], seen[0])  # the real batch always updates them
    assert head_bns[0].momentum == 0.1  # restored


def test_evaluation_is_untouched_by_the_hooks():
    method = zut()
    model = method.build_model(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 5, 4)).eval()
    images = torch.randn(3, 3, 2, 2)
    expected = model.head(model.encoder(images))
    assert torch.equal(method.predict(model, images), expected)
    assert method.zero.take() == []


# --------------------------------------------------------------------------- the base method
def test_zut_adds_its_loss_to_the_base_methods_loss():
    info = CLS_INFO
    plain = zut(base="uw")
    model = plain.build_model(Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 5, 4)).train()
    images = torch.randn(6, 3, 2, 2)
    batch = {"image": images, "target": torch.tensor([0, 1, 3, 0, 0, 2]), "group": torch.tensor([0, 0, 1, 1, 1, 0]),
             "index": torch.arange(6)}
    split = SplitData(images=images, attributes={"y": batch["target"], "g": batch["group"]},
                      values={"y": info.class_names, "g": ("g0", "g1")})
    train_set = FairDataset(split, info)
    plain.prepare_data(train_set, torch.Generator().manual_seed(0))  # uw's weights of the (class, group) cells
    loss = plain.compute_loss(model, batch)
    model.eval()
    with torch.no_grad():
        expected = plain.base.compute_loss(model, batch) + classification_zul(model(torch.zeros(1, 3, 2, 2)), 4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("params,needle", [
    ({"base": "adv"}, "method.params.base: adv has its own training step"),
    ({"base": "zut"}, "method.params.base: zut cannot regularise itself"),
    ({"base": "nope"}, "method.params.base"),
    ({"base": "uw", "base_params": {"alpha": 1}}, "method.params.base_params.alpha: unknown field"),
])
def test_a_base_zut_cannot_combine_with_is_one_line(params, needle):
    spec = parse_spec(small_spec("unused", method={"name": "zut", "params": params}))
    with pytest.raises(FairError) as error:
        resolve(spec, get_registry())
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_zut_refuses_a_base_that_does_not_serve_the_task():
    with pytest.raises(FairError, match="method.params.base: uw supports the classification task, not segmentation"):
        zut(SEG_INFO, SegmentationTask(), base="uw")


# --------------------------------------------------------------------------- two processes
def test_two_process_zut_segmentation_evaluates_as_one_process_evaluation_of_the_same_weights(tmp_path):
    out = tmp_path / "out"
    spec = small_spec(out, task="segmentation", method={"name": "zut"},
                      data={"name": "synthetic_segmentation", "params": {"train_size": 64, "test_size": 21, "image_size": 24}},
                      model={"name": "small_encoder_decoder", "params": {"width": 4}},
                      train={"epochs": 1, "batch_size": 16, "lr": 0.003, "seed": 0}, eval={"batch_size": 4, "bootstrap": 0})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    done = subprocess.run([*FAIR, "run", str(tmp_path / "spec.json"), "--num-processes", "2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    model = from_pretrained(out)
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load(
        "test", None, None, task=SegmentationTask())
    images = torch.stack([test.split.images[i] for i in range(len(test))])
    masks = torch.stack([test[i]["mask"] for i in range(len(test))])
    confusion = M.segmentation_confusion(model.segment(images), masks, 7, test.groups, 1, ignore_index=255)
    assert [c["pixels"] for c in metrics["classes"]] == confusion.sum((0, 2)).tolist()
    assert metrics["overall"]["mIoU"] == pytest.approx(M.mean_iou(confusion.sum(0)).item(), abs=1e-12)
    assert metrics["overall"]["mAcc"] == pytest.approx(M.mean_accuracy(confusion.sum(0)).item(), abs=1e-12)
