"""The focal loss (Lin et al., ICCV 2017) as ``train.loss``: the formula against hand-computed values,
its cross-entropy limit, the spec option (defaults dump as before), the classification task's loss,
a quickstart run with it, and its refusal by the tasks it does not apply to."""

import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F

from conftest import FAIR, ROOT
from fair_core.errors import FairError
from fair_core.losses import configure_task_loss, focal_loss
from fair_core.runner import resolve
from fair_core.spec import RunSpec, TrainSpec, parse_spec
from fair_core.tasks import ClassificationTask, SegmentationTask


def reference(probability: float, alpha: float, gamma: float) -> float:
    return -alpha * (1 - probability) ** gamma * math.log(probability)


# --------------------------------------------------------------------------- the formula
def test_binary_hand_computed_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], dtype=torch.double)  # softmax (1/4, 3/4)
    targets = torch.tensor([1, 0])
    values = focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    # p_t = 3/4: -0.25 (1/4)^2 ln(3/4) ; p_t = 1/4: -0.25 (3/4)^2 ln(1/4)
    assert values[0].item() == pytest.approx(0.25 * 0.0625 * -math.log(0.75))
    assert values[1].item() == pytest.approx(0.25 * 0.5625 * math.log(4.0))
    assert values[0].item() == pytest.approx(0.0044951, abs=1e-7)
    assert values[1].item() == pytest.approx(0.1949476, abs=1e-7)
    assert focal_loss(logits, targets, 0.25, 2.0).item() == pytest.approx(values.mean().item())
    assert focal_loss(logits, targets, 0.25, 2.0, reduction="sum").item() == pytest.approx(values.sum().item())


def test_three_class_hand_computed_values_with_vlbc_settings():
    logits = torch.log(torch.tensor([[1.0, 2.0, 5.0]], dtype=torch.double)).expand(3, 3)  # softmax (1/8, 2/8, 5/8)
    values = focal_loss(logits, torch.tensor([0, 1, 2]), alpha=0.25, gamma=3.0, reduction="none")
    for value, p in zip(values.tolist(), (1 / 8, 2 / 8, 5 / 8), strict=True):
        assert value == pytest.approx(reference(p, 0.25, 3.0))
    # the softmax is shift-invariant, so is the loss
    torch.testing.assert_close(focal_loss(logits + 7.0, torch.tensor([0, 1, 2]), 0.25, 3.0, "none"), values)


def test_gamma_0_and_alpha_1_is_the_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(64, 5, generator=g)).requires_grad_()
    targets = torch.randint(0, 5, (64,), generator=g)
    ours = focal_loss(logits, targets, alpha=1.0, gamma=0.0)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    ce = F.cross_entropy(logits, targets)
    (grad_ce,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(ours, ce)
    torch.testing.assert_close(grad_ours, grad_ce)
    # alpha alone scales it
    torch.testing.assert_close(focal_loss(logits, targets, alpha=0.25, gamma=0.0), 0.25 * ce)


def test_focusing_down_weights_easy_samples():
    logits = torch.tensor([[0.0, 4.0], [0.0, 0.5]])
    ce = F.cross_entropy(logits, torch.tensor([1, 1]), reduction="none")
    focal = focal_loss(logits, torch.tensor([1, 1]), alpha=1.0, gamma=2.0, reduction="none")
    ratio = focal / ce  # (1 - p_t)^gamma: far smaller for the easy sample
    assert ratio[0] < 0.001 < 0.1 < ratio[1] < 1


def test_two_classes_equal_torchvision_sigmoid_form_without_alpha_weighting():
    from torchvision.ops import sigmoid_focal_loss

    # softmax([0, z])[1] = sigmoid(z): the 2-way softmax head and one sigmoid agree without alpha_t
    z = torch.linspace(-4, 4, 9, dtype=torch.double)
    y = (torch.arange(9) % 2).long()
    logits = torch.stack([torch.zeros_like(z), z], dim=1)
    ours = focal_loss(logits, y, alpha=1.0, gamma=2.0, reduction="none")
    theirs = sigmoid_focal_loss(z, y.double(), alpha=-1, gamma=2.0, reduction="none")
    torch.testing.assert_close(ours, theirs)


def test_matches_vlbc_code_up_to_its_epsilons():
    """VLBC's utils/losses.py (focal_loss_ls, ls=0, as train_classifier.py calls it): softmax + 1e-8,
    one-hot + 1e-6, -alpha (1 - p)^gamma log p summed over classes, mean over samples."""
    g = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(256, 2, generator=g, dtype=torch.double)
    targets = torch.randint(0, 2, (256,), generator=g)
    soft = F.softmax(logits, dim=1) + 1e-8
    one_hot = F.one_hot(targets, 2).double() + 1e-6
    theirs = torch.sum(one_hot * (-0.25 * (1 - soft) ** 3 * torch.log(soft)), dim=1).mean()
    assert focal_loss(logits, targets, alpha=0.25, gamma=3.0).item() == pytest.approx(theirs.item(), rel=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_certain_sample_gives_zero_loss_and_finite_gradient(gamma):
    logits = torch.tensor([[0.0, 200.0], [0.0, 1.0]], requires_grad=True)  # p_t == 1 exactly for the first
    loss = focal_loss(logits, torch.tensor([1, 1]), alpha=0.25, gamma=gamma, reduction="none")
    assert loss[0].item() == 0.0
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all() and grad[0].abs().max() == 0


def test_gradient_matches_finite_differences():
    logits = torch.randn(4, 3, dtype=torch.double, generator=torch.Generator().manual_seed(2)).requires_grad_()
    targets = torch.tensor([0, 1, 2, 1])
    assert torch.autograd.gradcheck(lambda x: focal_loss(x, targets, 0.25, 3.0), (logits,))


# --------------------------------------------------------------------------- the spec option
def test_default_spec_dumps_as_before_the_option():
    train = RunSpec().model_dump(mode="json")["train"]
    assert not {"loss", "focal_alpha", "focal_gamma"} & set(train)
    # with cross_entropy the focal fields change nothing trained: not recorded, same hash
    explicit = parse_spec({"train": {"loss": "cross_entropy", "focal_gamma": 5}})
    assert explicit.model_dump(mode="json") == RunSpec().model_dump(mode="json")
    assert explicit.train.focal_gamma == 5.0


def test_focal_spec_is_recorded_and_round_trips():
    spec = parse_spec({"train": {"loss": "focal", "focal_gamma": 3}})
    train = spec.model_dump(mode="json")["train"]
    assert (train["loss"], train["focal_alpha"], train["focal_gamma"]) == ("focal", 0.25, 3.0)
    assert parse_spec(spec.model_dump(mode="json")) == spec
    assert spec.train.model_copy(update={"epochs": 2}).model_dump()["loss"] == "focal"


@pytest.mark.parametrize("train,needle", [
    ({"loss": "mse"}, "train.loss: Input should be 'cross_entropy' or 'focal'"),
    ({"loss": "focal", "focal_alpha": 0}, "train.focal_alpha"),
    ({"loss": "focal", "focal_gamma": -1}, "train.focal_gamma"),
    ({"focal": True}, "train.focal: unknown field"),
])
def test_bad_loss_fields_are_one_line(train, needle):
    with pytest.raises(FairError) as exc:
        parse_spec({"train": train})
    assert needle in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------- the task
def test_classification_task_uses_the_configured_loss():
    g = torch.Generator().manual_seed(3)
    logits, batch = torch.randn(16, 3, generator=g), {"target": torch.randint(0, 3, (16,), generator=g)}
    task = ClassificationTask()
    assert torch.equal(task.loss(logits, batch, None), F.cross_entropy(logits, batch["target"]))
    configure_task_loss(task, TrainSpec(loss="focal", focal_alpha=0.5, focal_gamma=3))
    assert torch.equal(task.loss(logits, batch, None), focal_loss(logits, batch["target"], 0.5, 3.0))
    configure_task_loss(task, TrainSpec())  # cross_entropy leaves a task as it is
    assert task.focal == (0.5, 3.0)
    task.configure_loss(TrainSpec())
    assert torch.equal(task.loss(logits, batch, None), F.cross_entropy(logits, batch["target"]))


def test_other_tasks_refuse_focal():
    configure_task_loss(SegmentationTask(), TrainSpec())  # their own loss: fine
    with pytest.raises(FairError, match=r"^train.loss: focal applies to the classification task, not segmentation"):
        configure_task_loss(SegmentationTask(), TrainSpec(loss="focal"))


def test_resolve_gives_the_task_the_spec_loss():
    run = resolve(parse_spec({"train": {"loss": "focal", "focal_gamma": 3}}))
    assert run.task.focal == (0.25, 3.0)
    assert resolve(parse_spec({})).task.focal is None
    with pytest.raises(FairError, match="train.loss: focal applies to the classification task, not verification"):
        resolve(parse_spec({"data": {"name": "synthetic_faces", "target": "identity"},
                                             "model": {"name": "small_embedding_cnn"}, "train": {"loss": "focal"}}))


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def focal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("focal") / "out"
    sets = ["train.loss=focal", "train.focal_gamma=3", "train.epochs=1", "data.params.train_size=64",
            "data.params.val_size=16", "data.params.test_size=64", "data.params.image_size=16", "eval.bootstrap=20"]
    args = [arg for item in sets for arg in ("--set", item)]
    result = subprocess.run([*FAIR, "run", str(ROOT / "examples" / "quickstart.json"), *args, "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=300)
    return out, result


def test_quickstart_with_focal_finishes(focal_run):
    out, result = focal_run
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["spec"]["train"]
    assert (train["loss"], train["focal_alpha"], train["focal_gamma"]) == ("focal", 0.25, 3.0)
    assert 0 <= metrics["overall"]["accuracy"] <= 1 and metrics["overall"]["n"] == 64
    assert {"signed_accuracy_difference", "mean_class_accuracy_spread"} <= set(metrics["fairness"])
    assert "macro_f1" in metrics["overall"]


def test_quickstart_with_focal_trains_with_it(focal_run):
    out, result = focal_run
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    (epoch_loss,) = [r["train/epoch_loss"] for r in log if "train/epoch_loss" in r]
    # one step from the initial model (p_t ~ 1/2): cross-entropy ~ ln 2 = 0.69, focal ~ 0.25 (1/2)^3 ln 2 = 0.02
    assert epoch_loss < 0.1


def test_segmentation_run_refuses_focal_in_one_line(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([*FAIR, "run", str(ROOT / "examples" / "segmentation.json"), "--set", "train.loss=focal",
                             "--output-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "train.loss: focal applies to the classification task, not segmentation" in lines[0]
    assert not out.exists(), "nothing may be written for a refused spec"


def test_a_method_with_its_own_loss_refuses_the_focal_loss():
    with pytest.raises(FairError, match="train.loss: focal is not used by the method uw, which computes its own loss"):
        resolve(parse_spec({"method": {"name": "uw"}, "train": {"loss": "focal"}}))
    assert resolve(parse_spec({"method": {"name": "us"}, "train": {"loss": "focal"}})).task.focal == (0.25, 2.0)
