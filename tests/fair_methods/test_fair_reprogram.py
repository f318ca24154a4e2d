"""FairReprogram: the trigger masks and how they are applied, the size checks, the adversary's
input, the projected trigger gradient and one training step against hand computations; end to
end, a frozen predictor and a trigger that the reloaded model applies."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import small_spec
from fair_core import DataInfo, FairError, Preprocessing, from_pretrained
from fair_core.models import SmallCNN
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec
from fair_methods.fair_reprogram import (
    Adversary,
    FairReprogram,
    Trigger,
    border_mask,
    patch_mask,
    projected_trigger_gradient,
)

MEAN, STD = (0.5, 0.4, 0.25), (0.5, 0.2, 0.25)
BLACK = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)])  # (0 - mean) / std: -1, -2, -1


def info(image_size: int) -> DataInfo:
    return DataInfo("toy", "y", ("b",), ("c0", "c1"), ("g0", "g1"), preprocessing=Preprocessing(image_size, MEAN, STD))


@pytest.mark.parametrize(("image_size", "size", "before", "after"), [(12, 8, 2, 2), (11, 8, 2, 1), (24, 22, 1, 1)])
def test_border_mask_is_a_frame_of_half_the_size_difference(image_size, size, before, after):
    mask = border_mask(image_size, size)
    assert mask.shape == (3, image_size, image_size)
    for i in range(image_size):
        for j in range(image_size):
            on_border = min(i, j) < before or max(i, j) >= image_size - after
            assert mask[:, i, j].tolist() == [float(on_border)] * 3, (i, j)
    assert mask.sum().item() == 3 * (image_size**2 - size**2)


def test_patch_mask_is_the_top_left_square():
    mask = patch_mask(10, 3)
    for i in range(10):
        for j in range(10):
            assert mask[:, i, j].tolist() == [float(i < 3 and j < 3)] * 3, (i, j)


def test_border_trigger_frames_the_shrunk_image_in_black_plus_the_pattern():
    trigger = Trigger("border", 8, 4, BLACK)
    with torch.no_grad():
        trigger.weight.fill_(0.5)
    colour = torch.tensor([0.3, -0.7, 1.1])
    images = colour.view(1, 3, 1, 1).expand(2, 3, 8, 8)  # a flat colour stays itself when shrunk
    out = trigger(images)
    pattern = math.tanh(0.5)
    for i in range(8):
        for j in range(8):
            inside = 2 <= i < 6 and 2 <= j < 6
            expected = colour if inside else BLACK + pattern
            torch.testing.assert_close(out[:, :, i, j], expected.expand(2, 3))


def test_border_trigger_shrinks_the_image_into_the_centre():
    trigger = Trigger("border", 8, 4, BLACK)
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # 8 -> 4 px, antialiased bilinear as PIL's (the study's Resize): output pixel i centred at 2i + 1,
    # a triangle of half-width 2 over the input centres j + 0.5, renormalised at the edges
    rows = torch.tensor([[3 / 7, 3 / 7, 1 / 7, 0, 0, 0, 0, 0],
                         [0, 1 / 8, 3 / 8, 3 / 8, 1 / 8, 0, 0, 0],
                         [0, 0, 0, 1 / 8, 3 / 8, 3 / 8, 1 / 8, 0],
                         [0, 0, 0, 0, 0, 1 / 7, 3 / 7, 3 / 7]])
    torch.testing.assert_close(trigger(images)[:, :, 2:6, 2:6], rows @ images @ rows.T)


def test_patch_trigger_replaces_the_pixels_under_the_square():
    trigger = Trigger("patch", 6, 2, BLACK)
    weight = torch.randn(3, 6, 6)
    with torch.no_grad():
        trigger.weight.copy_(weight)
    images = torch.randn(4, 3, 6, 6)
    out = trigger(images)
    torch.testing.assert_close(out[:, :, :2, :2], torch.tanh(weight[:, :2, :2]).expand(4, 3, 2, 2))
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[:2, :2] = False
    torch.testing.assert_close(out[:, :, outside], images[:, :, outside])


@pytest.mark.parametrize(("trigger", "size", "image_size"), [("border", 24, 24), ("border", 23, 24), ("border", 30, 24),
                                                             ("patch", 24, 24), ("patch", 25, 24), ("border", 1, 2)])
def test_a_trigger_of_no_pixels_is_refused_in_one_line_naming_the_field(trigger, size, image_size):
    with pytest.raises(FairError) as caught:
        FairReprogram(FairReprogram.Params(trigger=trigger, size=size), info(image_size))
    message = str(caught.value)
    assert message.startswith("method.params.size: ") and "\n" not in message


def test_the_default_sizes_are_the_study_proportions_and_the_smallest_border_is_accepted():
    assert FairReprogram(FairReprogram.Params(), info(224)).size == 184
    assert FairReprogram(FairReprogram.Params(trigger="patch"), info(224)).size == 90
    assert FairReprogram(FairReprogram.Params(trigger="patch"), info(16)).size == 6  # round(6.43)
    assert FairReprogram(FairReprogram.Params(size=22), info(24)).size == 22  # a 1 px border
    assert FairReprogram(FairReprogram.Params(trigger="patch", size=23), info(24)).size == 23


def test_adversary_reads_logits_sharpened_softmax_and_softmax_of_the_label():
    adversary = Adversary(num_classes=3, num_groups=2, sees_label=True)
    with torch.no_grad():
        adversary.c.fill_(-0.5)  # |c| = 0.5: softmax of 1.5 z
    seen = []
    adversary.mlp[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    adversary(logits, torch.tensor([1, 2]))
    e = [math.exp(1.5), math.exp(3.0), 1.0]
    s0 = [v / sum(e) for v in e]
    s1 = [1 / (2 + 2**1.5), 1 / (2 + 2**1.5), 2**1.5 / (2 + 2**1.5)]
    expected = torch.tensor([[1.0, 2.0, 0.0, *s0, 0.0, s0[1], 0.0],
                             [0.0, 0.0, math.log(2.0), *s1, 0.0, 0.0, s1[2]]])
    torch.testing.assert_close(seen[0], expected)
    blind = Adversary(num_classes=3, num_groups=2, sees_label=False)
    assert blind.mlp[0].in_features == 6 and adversary.mlp[0].in_features == 9


def test_projected_gradient_by_hand():
    g, g_adv = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 3.0, 4.0])
    # u = (0, 0.6, 0.8), g.u = 1.2: g - 1.2 u = (1, 1.28, -0.96); minus 10 g_adv
    torch.testing.assert_close(projected_trigger_gradient(g, g_adv, 10.0), torch.tensor([1.0, -28.72, -40.96]))


def test_projected_gradient_is_orthogonal_to_the_adversary_and_climbs_its_loss():
    generator = torch.Generator().manual_seed(0)
    g, g_adv = torch.randn(3, 5, 5, generator=generator), torch.randn(3, 5, 5, generator=generator)
    assert (projected_trigger_gradient(g, g_adv, 0.0) * g_adv).sum().item() == pytest.approx(0.0, abs=1e-5)
    along = (projected_trigger_gradient(g, g_adv, 2.0) * g_adv).sum().item()
    assert along == pytest.approx(-2.0 * (g_adv**2).sum().item(), rel=1e-5)  # a descent step raises L_adv
    torch.testing.assert_close(projected_trigger_gradient(g, torch.zeros_like(g), 2.0), g)  # no adversary signal


class HalvingScaler:
    """Stands in for fp16's GradScaler: a factor that each optimiser step halves (an overflow)."""

    def __init__(self):
        self.scale = 8.0

    def get_scale(self):
        return self.scale


class UnscalingSGD(torch.optim.SGD):
    """SGD stepping as an accelerated optimiser with a GradScaler: gradients divided by the
    current factor, then the factor updated."""

    def __init__(self, params, lr, scaler):
        super().__init__(params, lr=lr)
        self.scaler = scaler

    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                parameter.grad = parameter.grad / self.scaler.scale
        super().step()
        self.scaler.scale /= 2


class StubAccelerator:
    def __init__(self, scaler):
        self.scaler = scaler

    def unwrap_model(self, model):
        return model

    def reduce(self, tensors, reduction):
        return tensors


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-scaler"])
def test_training_step_moves_trigger_and_adversary_as_the_formulas_say(fp16):
    torch.manual_seed(0)
    scaler = HalvingScaler() if fp16 else None
    data = info(8)
    method = FairReprogram(FairReprogram.Params(trigger="patch", size=3, lam=4.0), data)
    model = method.build_model(SmallCNN(SmallCNN.Params(width=4)).build(2)).train()
    predictor_before = {k: v.clone() for k, v in model.predictor.state_dict().items()}
    if scaler is None:
        optimizers = [torch.optim.SGD(model.trigger.parameters(), lr=0.1),
                      torch.optim.SGD(model.adversary.parameters(), lr=0.01)]
    else:
        optimizers = [UnscalingSGD(model.trigger.parameters(), 0.1, scaler),
                      UnscalingSGD(model.adversary.parameters(), 0.01, scaler)]
    trainer = type("Trainer", (), {"accelerator": StubAccelerator(scaler), "optimizers": optimizers})()
    batch = {"image": torch.randn(6, 3, 8, 8), "target": torch.tensor([0, 1, 1, 0, 1, 0]),
             "group": torch.tensor([1, 1, 0, 0, 1, 0])}

    # the naive reference: two separate backward passes on copies of the parameters
    weight = model.trigger.weight.detach().clone().requires_grad_(True)
    adversary = {k: v.detach().clone().requires_grad_(True) for k, v in model.adversary.named_parameters()}
    triggered = batch["image"] * (1 - model.trigger.mask) + torch.tanh(weight * model.trigger.mask)
    logits = model.predictor(triggered)
    s = torch.softmax(logits * (1 + adversary["c"].abs()), 1)
    hidden = torch.relu(torch.cat([logits, s, s * F.one_hot(batch["target"], 2)], 1) @ adversary["mlp.0.weight"].T
                        + adversary["mlp.0.bias"])
    group_logits = hidden @ adversary["mlp.2.weight"].T + adversary["mlp.2.bias"]
    g = torch.autograd.grad(F.cross_entropy(logits, batch["target"]), weight, retain_graph=True)[0]
    g_adv, *adversary_grads = torch.autograd.grad(F.cross_entropy(group_logits, batch["group"]),
                                                  [weight, *adversary.values()])
    unit = g_adv / g_adv.norm()
    expected_weight = weight - 0.1 * (g - (g * unit).sum() * unit - 4.0 * g_adv)

    logs = method.training_step(model, batch, trainer)
    assert logs["loss"].item() == pytest.approx(F.cross_entropy(logits, batch["target"]).item(), rel=1e-6)
    torch.testing.assert_close(model.trigger.weight.detach(), expected_weight.detach())
    for (name, after), before, grad in zip(model.adversary.named_parameters(), adversary.values(), adversary_grads,
                                           strict=True):
        torch.testing.assert_close(after.detach(), (before - 0.01 * grad).detach(), msg=name)
    assert not model.predictor.training and not any(p.requires_grad for p in model.predictor.parameters())
    assert all(torch.equal(v, predictor_before[k]) for k, v in model.predictor.state_dict().items())


def _spec(out, **params):
    return small_spec(out, method={"name": "fair_reprogram", "params": {"epochs": 1, **params}},
                      data={"params": {"train_size": 300, "val_size": 16, "test_size": 64, "image_size": 16}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A border run that trains its base first (stage 1), and a patch run on that base."""
    root = tmp_path_factory.mktemp("fair-reprogram")
    border, patch = root / "border", root / "patch"
    run(parse_spec(_spec(border)))
    run(parse_spec(_spec(patch, trigger="patch", base=str(border / "base"))))
    return {"border": border, "patch": patch}


def _predictions(folder):
    rows = [line.split(",") for line in (folder / "predictions.csv").read_text().splitlines()[1:]]
    return [int(r[0]) for r in rows], torch.tensor([int(r[4]) for r in rows]), \
        torch.tensor([[float(v) for v in r[-2:]] for r in rows])


@pytest.mark.parametrize("trigger", ["border", "patch"])
def test_the_predictor_stays_the_base_bit_for_bit(runs, trigger):
    base = load_file(runs["border"] / "base" / "model.safetensors")
    weights = load_file(runs[trigger] / "model.safetensors")
    assert set(base) == {k.removeprefix("predictor.") for k in weights if k.startswith("predictor.")}
    assert all(torch.equal(weights[f"predictor.{k}"], v) for k, v in base.items())
    expected_mask = border_mask(16, 13) if trigger == "border" else patch_mask(16, 6)  # the study's proportions
    assert torch.equal(weights["trigger.mask"], expected_mask)


@pytest.mark.parametrize("trigger", ["border", "patch"])
def test_the_reloaded_model_applies_the_trigger(runs, trigger):
    folder = runs[trigger]
    model = from_pretrained(folder)
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    split = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).read_split("test")
    rows, predictions, scores = _predictions(folder)
    images = torch.stack([split.images[i] for i in rows])
    with torch.no_grad():
        torch.testing.assert_close(model.predict_proba(images), scores, atol=2e-6, rtol=0)
        assert torch.equal(model.predict(images), predictions)
    _, _, base_scores = _predictions(runs["border"] / "base")
    assert (scores - base_scores).abs().max() > 1e-3  # the run's own evaluation saw the trigger too
