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

from conftest import FAIR, ROOT, small_spec
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


@pytest.mark.parametrize("mode", ["train", "frozen", "eval"])
def test_the_zero_pass_treats_the_heads_batchnorm_as_asked(mode):
    method = zut(SEG_INFO, SegmentationTask(), zero_head_bn=mode)
    model = method.build_model(SmallEncoderDecoder(SmallEncoderDecoderParams(width=4)).build(3)).train()
    bn = next(m for m in model.head.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # far from any batch's statistics: an eval-mode pass is easy to tell apart
    calls = []
    bn.register_forward_hook(lambda m, args, out: calls.append(
        (m.training, m.running_mean.clone(), out.mean((0, 2, 3)).abs().max().item())))
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8)), "group": torch.zeros(2, dtype=torch.long)}
    method.compute_loss(model, batch)
    (zero_training, after_zero, zero_out_mean), (real_training, after_real, real_out_mean) = calls
    assert (not torch.equal(after_zero, torch.full_like(after_zero, 5.0))) == (mode == "train")  # updated?
    assert zero_training == (mode != "eval") and real_training
    # batch statistics centre each channel (mean 0 before the affine shift, which starts at 0)
    assert (zero_out_mean < 1e-4) == (mode != "eval") and real_out_mean < 1e-4
    assert not torch.equal(after_real, after_zero)  # the real batch always updates the running statistics
    assert bn.training and bn.momentum == 0.1  # restored


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


# --------------------------------------------------------------------------- behaviour
def zero_uniformity_as_trained(run_dir) -> float:
    """The ZUL a trained segmenter gives the zero image on the path ZUT trains it on (in front of
    16 test images, BatchNorm with batch statistics, the head's pass apart), dropout seeded."""
    from fair_methods.zut import ZeroInput

    model = from_pretrained(run_dir)
    net = model.network.train()
    zero = getattr(model.method, "zero", None) or ZeroInput(net, decode_apart=True, head_bn="frozen")
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load(
        "test", None, None, task=SegmentationTask())
    images = torch.stack([test[i]["image"] for i in range(16)])
    torch.manual_seed(0)
    with torch.no_grad():
        net(images)
    return segmentation_zul(zero.take()[0], images.shape[-2:]).item()


def test_zut_evens_the_zero_images_class_scores_and_keeps_mean_class_accuracy(tmp_path):
    """examples/zut.json against examples/segmentation.json (ERM), same recipe, budget and seed.

    Measured on train seeds 0/1/2 (one 2-core machine): the zero image's ZUL on the path ZUT
    trains (batch statistics) 2.40/2.24/2.19 (ERM) vs 0.05/0.07/0.04 (ZUT); mAcc 0.577/0.596/0.591
    vs 0.584/0.610/0.597, aAcc 0.897/0.903/0.899 vs 0.899/0.905/0.902; worst-class IoU 0 for both
    (the rare ring stays unlearned). mAcc rose on every seed but by 0.006-0.014, which is within
    the run-to-run differences between machines seen for other methods, so the assertion allows
    0.01. The zero image's scores in evaluation mode (running statistics) did not fall on every
    seed (2.49/2.94/3.33 vs 2.70/1.21/2.51): see the ZUT docstring."""
    results = {}
    for name in ("segmentation", "zut"):
        results[name] = run_spec(tmp_path / name, ROOT / f"examples/{name}.json")
    erm, zut_run = results["segmentation"], results["zut"]
    assert zero_uniformity_as_trained(tmp_path / "zut") < 0.1 * zero_uniformity_as_trained(tmp_path / "segmentation")
    assert zut_run["overall"]["mAcc"] >= erm["overall"]["mAcc"] - 0.01, (zut_run["overall"], erm["overall"])


def run_spec(out, path):
    from fair_core.runner import run
    from fair_core.spec import load_spec

    return run(load_spec(path, ["train.seed=1", "eval.bootstrap=0"], str(out)))
