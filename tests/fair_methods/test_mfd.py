"""MFD: the MMD and its bandwidth against loops over pairs, the per-cell sum, label-wise batches,
the teacher's hand-over, and a tiny two-stage run."""

import math
from collections.abc import Callable

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import fair_core.runner
from conftest import small_spec
from fair_core import DataInfo, FairDataset, FairError, FairModel, SplitData
from fair_core.models import ResNet18, SmallCNN
from fair_core.runner import run
from fair_core.spec import TrainSpec, parse_spec
from fair_methods.mfd import (
    MFD,
    distillation_loss,
    fair_distillation_loss,
    kernel_bandwidth,
    labelwise_order,
    last_pooling,
    logits_and_feature_maps,
    mmd_squared,
)


def naive_squared_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist(), strict=True))


def naive_mmd_squared(teacher: torch.Tensor, student: torch.Tensor, width: float) -> float:
    def mean_kernel(a, b):
        return sum(math.exp(-naive_squared_distance(x, y) / (2 * width)) for x in a for y in b) / (len(a) * len(b))

    return mean_kernel(teacher, teacher) + mean_kernel(student, student) - 2 * mean_kernel(teacher, student)


def naive_bandwidth(teacher: torch.Tensor, student: torch.Tensor) -> float:
    distances = [naive_squared_distance(t, s) for t in teacher for s in student]
    return sum(distances) / len(distances)


def test_mmd_squared_matches_a_double_loop_over_pairs():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    student = torch.randn(3, 7, generator=generator, dtype=torch.float64)
    for width in (0.5, 4.0, 30.0):
        assert mmd_squared(teacher, student, width).item() == pytest.approx(naive_mmd_squared(teacher, student, width), rel=1e-9)
    assert mmd_squared(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_bandwidth_is_the_mean_teacher_student_squared_distance_detached():
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    student = torch.tensor([[0.0, 1.0], [3.0, 0.0]], requires_grad=True)
    bandwidth = kernel_bandwidth(teacher, student)
    assert bandwidth.item() == pytest.approx((1 + 9 + 2 + 4) / 4)  # (0,0)-(0,1), (0,0)-(3,0), (1,0)-(0,1), (1,0)-(3,0)
    assert not bandwidth.requires_grad


def test_fair_distillation_loss_sums_mmd_over_present_cells_with_the_batch_bandwidth():
    generator = torch.Generator().manual_seed(1)
    # cells (y, b): (0, 0) x2, (0, 1) x1, (1, 0) x3, (1, 1) absent
    targets = torch.tensor([0, 0, 0, 1, 1, 1])
    groups = torch.tensor([0, 1, 0, 0, 0, 0])
    student_maps = torch.randn(6, 2, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher_maps = torch.randn(6, 2, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    student, teacher = student_maps.detach().flatten(1), teacher_maps.detach().flatten(1)
    sigma = 2.0
    width = sigma * naive_bandwidth(teacher, student)
    expected = (naive_mmd_squared(teacher[targets == 0], student[(targets == 0) & (groups == 0)], width)
                + naive_mmd_squared(teacher[targets == 0], student[(targets == 0) & (groups == 1)], width)
                + naive_mmd_squared(teacher[targets == 1], student[(targets == 1) & (groups == 0)], width))
    loss = fair_distillation_loss(student_maps, teacher_maps, targets, groups, 2, 2, sigma)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert teacher_maps.grad is None and student_maps.grad.abs().sum() > 0  # the teacher is a fixed target


def test_distillation_loss_is_t_squared_kl_of_softened_outputs():
    student, teacher, t = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]), torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]), 3.0
    expected = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = torch.softmax(s_row / t, 0).tolist(), torch.softmax(t_row / t, 0).tolist()
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True)) / 2
    assert distillation_loss(student, teacher, t).item() == pytest.approx(t * t * expected, rel=1e-5)


# --------------------------------------------------------------------------- label-wise batches
def toy_dataset(cells: dict[tuple[int, int], int]) -> FairDataset:
    """``cells[(y, b)]`` samples per (class, group) cell, two classes and two groups."""
    targets, groups = [], []
    for (y, b), n in cells.items():
        targets += [y] * n
        groups += [b] * n
    split = SplitData(torch.zeros(len(targets), 3, 2, 2), {"y": torch.tensor(targets), "b": torch.tensor(groups)},
                      {"y": ("c0", "c1"), "b": ("g0", "g1")})
    return FairDataset(split, DataInfo("toy", "y", ("b",), ("c0", "c1"), ("g0", "g1")))


CELLS = {(0, 0): 50, (0, 1): 3, (1, 0): 7, (1, 1): 40}  # cell g = y + 2 b: sizes 50, 7, 3, 40


def epoch_order_of(dataset: FairDataset, batch_size: int) -> tuple[int, Callable]:
    """The batch size MFD trains with and its epoch order, for a spec's ``batch_size``."""
    method = MFD(MFD.Params(), dataset.info)
    train = method.stage_train(TrainSpec(batch_size=batch_size))
    return train.batch_size, method.prepare_data(dataset, torch.Generator().manual_seed(0)).epoch_order


def test_labelwise_order_gives_every_batch_equal_cells():
    dataset = toy_dataset(CELLS)
    batch_size, epoch_order = epoch_order_of(dataset, 14)  # 4 cells: rounded down to 12, 3 per cell
    assert batch_size == 12
    order = epoch_order(torch.Generator().manual_seed(5))
    assert order.numel() == len(dataset) == 100
    cells = (dataset.targets + 2 * dataset.groups)[order]
    batches = cells.split(batch_size)
    assert len(batches) == 9
    for batch in batches[:-1]:
        assert torch.bincount(batch, minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.bincount(batches[-1], minlength=4).tolist() == [1, 1, 1, 1]  # 100 - 8 * 12 = 4 positions


def test_labelwise_order_repeats_small_cells_evenly_and_subsamples_large_ones():
    dataset = toy_dataset(CELLS)
    cells = dataset.targets + 2 * dataset.groups
    order = labelwise_order(cells, 4, 3, torch.Generator().manual_seed(2))  # 27 draws per cell, 2 cut from the last batch
    uses = torch.bincount(order, minlength=len(dataset))
    assert uses[cells == 0].max() == 1 and uses[cells == 0].sum() == 25  # 50 samples: a subset, no repeats
    assert set(uses[cells == 2].tolist()) <= {8, 9} and uses[cells == 2].sum() == 25  # 3 samples: 9 passes, cut by 2
    assert set(uses[cells == 1].tolist()) <= {2, 3, 4} and uses[cells == 1].sum() == 25  # 7 samples: 27 = 3 * 7 + 6


def test_labelwise_order_is_a_function_of_the_generator():
    dataset = toy_dataset(CELLS)
    _, epoch_order = epoch_order_of(dataset, 12)
    first = epoch_order(torch.Generator().manual_seed(3))
    assert torch.equal(first, epoch_order(torch.Generator().manual_seed(3)))
    assert not torch.equal(first, epoch_order(torch.Generator().manual_seed(4)))


def test_labelwise_batches_refuse_a_small_batch_and_an_empty_cell():
    dataset = toy_dataset(CELLS)
    with pytest.raises(FairError, match="train.batch_size: .* 4 .* 3 is fewer"):
        epoch_order_of(dataset, 3)
    with pytest.raises(FairError, match=r"no sample in \(c1, g1\)"):
        epoch_order_of(toy_dataset({(0, 0): 5, (0, 1): 3, (1, 0): 7}), 8)


# --------------------------------------------------------------------------- teacher and feature maps
def test_the_base_is_the_teacher_and_the_student_keeps_its_own_initialisation():
    info = toy_dataset(CELLS).info
    teacher, student = SmallCNN(SmallCNN.Params(width=4)).build(2), SmallCNN(SmallCNN.Params(width=4)).build(2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    method = MFD(MFD.Params(), info)
    method.use_base(teacher, student)
    assert method.base is teacher
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name])
    assert not torch.equal(student.head.weight, teacher.head.weight)


@pytest.mark.parametrize("builder", [SmallCNN(SmallCNN.Params(width=4)), ResNet18(ResNet18.Params())],
                         ids=["small_cnn", "resnet18"])
def test_feature_maps_are_the_input_of_the_last_global_pooling(builder):
    model = builder.build(3).eval()
    images = torch.randn(2, 3, 32, 32)
    pooling = last_pooling(model, "any")
    logits, maps = logits_and_feature_maps(model, pooling, images)
    assert maps.dim() == 4 and maps.shape[1] == model.feature_dim and maps.shape[0] == 2
    torch.testing.assert_close(logits, model.head(maps.mean((2, 3))))  # pooled and flattened, as the encoder does
    assert not pooling._forward_hooks  # the hook is removed


def test_an_encoder_without_global_pooling_is_refused_naming_the_model():
    model = SmallCNN(SmallCNN.Params(width=4)).build(2)
    model.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(FairError, match="model.name: .*the encoder of my_net has none"):
        last_pooling(model, "my_net")


# --------------------------------------------------------------------------- end to end
def test_tiny_two_stage_run_keeps_the_teacher_and_saves_a_plain_student(tmp_path, monkeypatch):
    teachers = []

    def recording_load_base(*args):
        teacher = load_base(*args)
        teachers.append(teacher)
        return teacher

    load_base = fair_core.runner.load_base
    monkeypatch.setattr(fair_core.runner, "load_base", recording_load_base)
    out = tmp_path / "mfd"
    spec = small_spec(out, method={"name": "mfd", "params": {"lambda_f": 3.0, "lambda_h": 0.5}},
                      train={"epochs": 2, "batch_size": 32, "scheduler": "multistep"}, eval={"bootstrap": 10},
                      data={"params": {"train_size": 160, "val_size": 16, "test_size": 32, "image_size": 16}})
    result = run(parse_spec(spec))
    assert result["spec"]["method"]["name"] == "mfd"
    assert (out / "base" / "metrics.json").is_file() and (out / "metrics.json").is_file()

    teacher_weights = load_file(str(out / "base" / "model.safetensors"))
    (teacher,) = teachers
    assert not teacher.training
    for name, value in teacher.state_dict().items():  # BatchNorm statistics included: untouched by stage 2
        assert torch.equal(value.cpu(), teacher_weights[name]), name

    student = FairModel.from_pretrained(out)
    student_weights = load_file(str(out / "model.safetensors"))
    assert student_weights.keys() == teacher_weights.keys()  # a plain classifier, nothing added
    assert not torch.equal(student_weights["head.weight"], teacher_weights["head.weight"])
    images = torch.rand(3, 3, 16, 16)
    scores = student(student.preprocess(images))
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores, student.network(student.preprocess(images)))
