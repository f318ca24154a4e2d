"""FAAP: the generator's loss against hand computations, the perturbation bound in pixels, the
generator's output size, gradients reaching the generator in one training step, and a run whose
deployed model is the base's, unchanged, and whose reloaded model applies the generator."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import small_spec
from fair_core import Classifier, DataInfo, Preprocessing
from fair_core.hub import from_pretrained
from fair_core.plugins import get_registry
from fair_core.runner import run
from fair_core.spec import parse_spec
from fair_methods.faap import FAAP, FAAPParams, PerturbationGenerator, PerturbedModel, generator_loss, mean_entropy

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INFO = DataInfo("toy", "y", ("b",), ("c0", "c1"), ("g0", "g1"), preprocessing=Preprocessing(24, MEAN, STD))


def tiny_classifier(seed: int) -> Classifier:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten())
    return Classifier(encoder, 4, 2)


def normalise(pixels):
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def pixels_of(images):
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- the generator's loss
def test_generator_loss_against_hand_computed_values():
    # sample 0: D uniform (p = 1/2, 1/2), group 0; sample 1: D p = (3/4, 1/4), group 1
    group_logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    groups = torch.tensor([0, 1])
    class_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    d_ce = (math.log(2) + math.log(4)) / 2
    entropy = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    class_ce = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    assert mean_entropy(group_logits).item() == pytest.approx(entropy)
    loss = generator_loss(group_logits, class_logits, groups, targets, alpha=0.4, beta=0.1, gamma=0.7)
    assert loss.item() == pytest.approx(-0.4 * d_ce - 0.1 * entropy + 0.7 * class_ce)


def test_the_generator_loss_falls_as_the_discriminator_grows_uncertain():
    """At a confident, correct discriminator, the gradient of L_G on its logits moves them towards
    each other (its loss and its entropy rise), for the entropy term alone too."""
    group_logits = torch.tensor([[3.0, -3.0]], requires_grad=True)
    for alpha, beta in ((0.4, 0.1), (0.0, 0.1)):
        loss = generator_loss(group_logits, torch.zeros(1, 2), torch.tensor([0]), torch.tensor([0]), alpha, beta, 0.7)
        (grad,) = torch.autograd.grad(loss, group_logits)
        assert grad[0, 0] > 0 > grad[0, 1]  # descent lowers the winning logit, raises the other


# --------------------------------------------------------------------------- the perturbation
class FixedDirections(nn.Module):
    """A stand-in generator: always the same directions in [-1, 1]."""

    def __init__(self, directions):
        super().__init__()
        self.directions = directions

    def forward(self, pixels):
        return self.directions.expand_as(pixels)


def test_the_perturbation_is_epsilon_times_the_generator_in_pixels_clamped_to_0_1():
    pixels = torch.tensor([0.0, 0.02, 0.5, 0.97, 1.0, 0.3]).view(1, 1, 2, 3).repeat(1, 3, 1, 1)
    directions = torch.tensor([1.0, -1.0, -0.5, 1.0, -1.0, 0.25]).view(1, 1, 2, 3).repeat(1, 3, 1, 1)
    model = PerturbedModel(tiny_classifier(0), FixedDirections(directions), 0.05, MEAN, STD)
    perturbed = pixels_of(model.perturb(normalise(pixels)))
    # 0 + 0.05, 0.02 - 0.05 -> 0, 0.5 - 0.025, 0.97 + 0.05 -> 1, 1 - 0.05, 0.3 + 0.0125
    expected = torch.tensor([0.05, 0.0, 0.475, 1.0, 0.95, 0.3125]).view(1, 1, 2, 3).repeat(1, 3, 1, 1)
    torch.testing.assert_close(perturbed, expected, atol=1e-6, rtol=0)


def test_the_learned_perturbation_stays_within_epsilon_pixels_and_the_pixel_range():
    torch.manual_seed(0)
    generator = PerturbationGenerator(width=4)
    with torch.no_grad():
        generator.decoder[-2].weight.mul_(1e4)  # a saturated tanh: the bound is reached
    model = PerturbedModel(tiny_classifier(0), generator, 0.05, MEAN, STD).eval()
    pixels = torch.rand(4, 3, 24, 24)
    pixels[0, :, :4] = 0.0
    pixels[1, :, :4] = 1.0
    with torch.no_grad():
        perturbed = pixels_of(model.perturb(normalise(pixels)))
    change = (perturbed - pixels).abs()
    # the bound is reached, in pixels whatever the std (in normalised units it would be 0.05 * std < 0.012)
    assert change.max().item() == pytest.approx(0.05, abs=1e-6)
    assert perturbed.min().item() >= -1e-6 and perturbed.max().item() <= 1 + 1e-6


@pytest.mark.parametrize("size", [24, 30, 17])
def test_the_generator_keeps_the_image_size(size):
    assert PerturbationGenerator(width=4)(torch.rand(2, 3, size, size)).shape == (2, 3, size, size)
    assert PerturbationGenerator(width=4)(torch.rand(1, 3, size, size + 6)).shape == (1, 3, size, size + 6)


# --------------------------------------------------------------------------- one training step
class OneProcessTrainer:
    """What FAAP's hooks use of the runner's Trainer, on one process."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.accelerator = SimpleNamespace(prepare=lambda module: module)

    def step(self, loss, optimizer):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_one_training_step_updates_the_generator_and_discriminator_not_the_deployed_model():
    params = FAAPParams(generator_width=4)
    method = FAAP(params, INFO)
    base = tiny_classifier(1).requires_grad_(False).eval()
    backbone = tiny_classifier(2)
    method.use_base(base, backbone)  # the backbone starts from the base's weights
    model = method.build_model(backbone)
    optimizers = method.configure_optimizers(model, lambda parameters: torch.optim.Adam(parameters, lr=params.generator_lr))
    trainer = OneProcessTrainer(optimizers)
    method.setup(model, trainer)
    model.train()
    assert model.generator.training and not model.deployed.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    discriminator_before = {k: v.clone() for k, v in method.discriminator.state_dict().items()}
    torch.manual_seed(0)
    batch = {"image": normalise(torch.rand(8, 3, 24, 24)), "target": torch.tensor([0, 1] * 4),
             "group": torch.tensor([0, 0, 1, 1] * 2)}
    logs = method.training_step(model, batch, trainer)
    assert math.isfinite(float(logs["loss"]))
    after = model.state_dict()
    for name, parameter in model.generator.named_parameters():  # the study's no_grad features leave them unchanged
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        assert not torch.equal(after[f"generator.{name}"], before[f"generator.{name}"]), name
    for name, value in base.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(after[f"deployed.{name}"], value) and torch.equal(before[f"deployed.{name}"], value), name
    assert all(not p.requires_grad for p in model.deployed.parameters())
    assert all(not torch.equal(v, discriminator_before[k]) for k, v in method.discriminator.state_dict().items())


# --------------------------------------------------------------------------- a run
@pytest.fixture(scope="module")
def faap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faap") / "run"
    spec = small_spec(out, method={"name": "faap", "params": {"epochs": 1, "batch_size": 32, "generator_width": 4}},
                      train={"epochs": 1}, eval={"bootstrap": 10},
                      data={"params": {"train_size": 128, "val_size": 16, "test_size": 64, "image_size": 20}})
    return out, run(parse_spec(spec))


def test_the_run_keeps_the_base_model_bit_identical_as_the_deployed_model(faap_run):
    out, result = faap_run
    base, weights = load_file(out / "base" / "model.safetensors"), load_file(out / "model.safetensors")
    assert base and all(torch.equal(weights[f"deployed.{k}"], v) for k, v in base.items())
    assert {k for k in weights if not k.startswith("deployed.")} == {f"generator.{k}" for k in PerturbationGenerator(4).state_dict()}
    assert result["timing"]["epochs_timed"] == 1 and result["timing"]["steps_timed"] == 4  # 128 / 32


def test_the_reloaded_model_applies_the_generator_as_the_run_did(faap_run):
    out, _ = faap_run
    model = from_pretrained(out)
    data = model.fair_config["data"]
    builder_cls = get_registry().get("datasets", data["name"]).obj
    test = builder_cls(builder_cls.Params.model_validate(data["params"]), data["name"]).load("test", None, None)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    order = torch.tensor([int(r["index"]) for r in rows])
    pixels = torch.stack([test.split.images[int(i)] for i in order])
    recorded = torch.tensor([[float(r["score_square"]), float(r["score_circle"])] for r in rows])
    assert model.predict(pixels).tolist() == [int(r["prediction"]) for r in rows]
    torch.testing.assert_close(model.predict_proba(pixels), recorded, atol=2e-6, rtol=0)
    with torch.no_grad():  # the deployed model alone scores otherwise: the generator was applied
        unperturbed = model.network.deployed(model.preprocess(pixels)).softmax(1)
    assert (unperturbed - recorded).abs().max().item() > 1e-4
