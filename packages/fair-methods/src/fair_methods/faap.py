"""FAAP: fairness-aware adversarial perturbation (Wang et al., "Fairness-aware Adversarial
Perturbation Towards Bias Mitigation for Deployed Deep Models", CVPR 2022).

The deployed model ``f`` (features) / ``h`` (class head) stays frozen; FAAP learns a generator
``G`` of input perturbations that hide the protected attribute from the model's features while
keeping its predictions. On pixels ``x`` in [0, 1] (recovered from the normalised input with the
dataset's mean and std, and normalised again after):

    x' = clamp(x + epsilon * G(x), 0, 1)           G ends with tanh: |x' - x| <= epsilon per pixel

A discriminator ``D`` (MLP ``feature_dim - 256 - 128 - groups``) learns the protected group ``s``
from the perturbed features, and the generator learns to fool it. Each step, on one batch:

    L_D = CE(D(f(x')), s)                                       (D step: features detached)
    L_G = -alpha CE(D(f(x')), s) - beta mean_i H(softmax D(f(x'_i))) + gamma CE(h(f(x')), y)

with ``H(p) = -sum_k p_k log p_k``: minimising ``L_G`` maximises the discriminator's loss and its
uncertainty while keeping the deployed model's class loss low. The G step runs after the D step,
through the updated discriminator.

Generator (``w = generator_width``): three 4x4 stride-2 convolutions (``w, 2w, 4w`` channels,
InstanceNorm, ReLU), a residual block (3x3 convolution, BatchNorm, ReLU, dropout), three 4x4
stride-2 transposed convolutions (``2w, w, 3``; InstanceNorm and ReLU between them), tanh;
DCGAN initialisation (convolution weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02)). Images
whose side is not a multiple of 8 are padded (edge pixels repeated) for the generator and its
output cropped back, so the perturbation has the image's size.

The study's code bounds the perturbation by clamping the generator's tanh output to
[-0.05, 0.05], which stops its gradient wherever the output exceeds the bound, and feeds the
generator the normalised images; here epsilon scales the tanh output, and the generator sees pixels.

Defaults (the study's settings): ``epsilon = 0.05``, ``alpha = 0.4``, ``beta = 0.1``,
``gamma = 0.7``; G: Adam, lr 5e-4; D: Adam, lr 1e-4, weight decay 1e-4; 50 epochs, batch 64,
``generator_width = 32``, dropout 0.5. The generator's optimiser is the loop's recipe
(:meth:`FAAP.stage_train`: Adam at ``generator_lr``, no weight decay, no schedule); the
discriminator's is built here with its own lr and weight decay.

The deployed model is the base model (``method.params.base``, or an ``erm`` run of the same spec
trained first in ``<output_dir>/base``). The saved model is a :class:`PerturbedModel`: the
deployed model, unchanged, and the generator; its ``forward`` perturbs, so evaluation,
``fair predict`` and :meth:`fair_core.FairModel.from_pretrained` all apply the perturbation. The
discriminator serves training only: it is the method's (``self.discriminator``), kept in the
checkpoint through :meth:`FAAP.state_dict` and not in the released model; with several processes
it is prepared (wrapped in DDP) on its own, and every generator parameter gets a gradient in every
step, so ``ddp_find_unused_parameters`` stays False.

On the synthetic biased dataset (``examples/faap.json``, 5 epochs; the base is
the short recipe (8 epochs at a constant lr, ``tests/fair_methods/short_recipe.json``), train =
data seeds 0/1/2; leakage: the within-class held-out accuracy of a fresh adversary on the class
scores, :mod:`fair_core.leakage`, floor 0.5):

    ==========  ================  ================  ================  ================
    run         accuracy          worst group       EOD               leakage
    ==========  ================  ================  ================  ================
    base (ERM)  .794/.844/.879    .590/.687/.803    .820/.626/.394    .925/.885/.945
    FAAP        .851/.921/.883    .707/.843/.799    .576/.310/.402    .735/.847/.904
    ==========  ================  ================  ================  ================

The perturbation lowered the leakage from the scores on every seed (the tests assert it), and
the equalized-odds difference on two of three, raising accuracy where the base was weakest (seed
2: no change). The features keep the colour: a fresh adversary on them is right 0.998 to 1.000 of
the time within a class, before and after; the ±0.05 pixel budget cannot remove a colour that
spans the whole image, only change how the head reads it.

Defects of the study's code (DL-Fairness-Study, FAAP/faap.py) fixed here:

* The study's code computes the deployed model's features under ``no_grad``, so the generator never
  gets a gradient and never learns; here only the deployed model's weights are frozen
  (``requires_grad = False``), and the gradient of ``L_G`` reaches the generator through them.
* The study's code adds the perturbation to mean/std-normalised images and clamps them to [0, 1]
  (CelebA, UTKFace) or [-1, 1] (CIFAR-10S), neither of which is the images' range, so the bound
  was not in pixels either; here ``epsilon`` bounds the change of each pixel in [0, 1] and the
  clamp is the pixel range, whatever the dataset's mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from fair_core import Classifier, Method
from fair_core.base_model import BaseModelParams

GENERATOR_STRIDE = 8  # three stride-2 convolutions


class FAAPParams(BaseModelParams):
    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(0.05, gt=0, le=1, description="largest change of a pixel (images in [0, 1])")
    alpha: float = Field(0.4, ge=0, description="weight of the discriminator's loss the generator maximises")
    beta: float = Field(0.1, ge=0, description="weight of the discriminator's mean entropy the generator maximises")
    gamma: float = Field(0.7, ge=0, description="weight of the deployed model's class loss on perturbed images")
    epochs: int = Field(50, ge=1, description="epochs of adversarial training of the generator")
    batch_size: int = Field(64, ge=1, description="batch size of adversarial training")
    generator_lr: float = Field(5e-4, gt=0, description="Adam learning rate of the generator")
    discriminator_lr: float = Field(1e-4, gt=0, description="Adam learning rate of the discriminator")
    discriminator_weight_decay: float = Field(1e-4, ge=0, description="weight decay of the discriminator's Adam")
    generator_width: int = Field(32, ge=1, le=256, description="channels of the generator's first convolution "
                                 "(doubled twice)")
    generator_dropout: float = Field(0.5, ge=0, lt=1, description="dropout in the generator's residual block")


class ResidualBlock(nn.Module):
    """``x + Dropout(ReLU(BatchNorm(Conv3x3(x))))``."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class PerturbationGenerator(nn.Module):
    """Images ``(N, 3, H, W)`` -> perturbation directions in [-1, 1] of the same shape."""

    def __init__(self, width: int = 32, dropout: float = 0.5):
        super().__init__()

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.InstanceNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.encoder = nn.Sequential(*down(3, width), *down(width, 2 * width), *down(2 * width, 4 * width))
        self.bottleneck = ResidualBlock(4 * width, dropout)
        self.decoder = nn.Sequential(*up(4 * width, 2 * width), *up(2 * width, width),
                                     nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1, bias=False), nn.Tanh())
        self.apply(dcgan_init)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, -width % GENERATOR_STRIDE, 0, -height % GENERATOR_STRIDE), mode="replicate")
        return self.decoder(self.bottleneck(self.encoder(padded)))[..., :height, :width]


def dcgan_init(module: nn.Module) -> None:
    """Convolution weights ~ N(0, 0.02); BatchNorm scales ~ N(1, 0.02), shifts 0 (the study's)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class FeatureDiscriminator(nn.Module):
    """MLP ``feature_dim - 256 - 128 - groups`` predicting the protected group from features."""

    def __init__(self, feature_dim: int, num_groups: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, 256), nn.ReLU(inplace=True), nn.Linear(256, 128),
                                 nn.ReLU(inplace=True), nn.Linear(128, num_groups))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.flatten(1))


class PerturbedModel(nn.Module):
    """The frozen deployed model behind the learned perturbation: ``forward`` gives the deployed
    model's output (logits, and features if asked) on ``perturb(images)``."""

    def __init__(self, deployed: Classifier, generator: PerturbationGenerator, epsilon: float,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.deployed = deployed.requires_grad_(False).eval()
        self.generator, self.epsilon = generator, epsilon
        # the dataset's normalisation, from the run's (or config.json's) data info: not saved
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerturbedModel:
        super().train(mode)
        self.deployed.eval()  # frozen, BatchNorm statistics included
        return self

    def perturb(self, images: Tensor) -> Tensor:
        """Normalised images -> the normalised images of ``clamp(x + epsilon * G(x), 0, 1)``, ``x``
        their pixels."""
        pixels = images * self.std + self.mean
        perturbed = (pixels + self.epsilon * self.generator(pixels)).clamp(0.0, 1.0)
        return (perturbed - self.mean) / self.std

    def features(self, images: Tensor) -> Tensor:
        """The deployed model's features of the perturbed images (what the discriminator sees)."""
        return self.deployed.features(self.perturb(images))

    def forward(self, images: Tensor, with_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return self.deployed(self.perturb(images), with_features=with_features)


def mean_entropy(logits: Tensor) -> Tensor:
    """``mean_i H(softmax(logits_i))``, ``H(p) = -sum_k p_k log p_k``."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def generator_loss(group_logits: Tensor, class_logits: Tensor, groups: Tensor, targets: Tensor,
                   alpha: float, beta: float, gamma: float) -> Tensor:
    """``L_G = -alpha CE(group_logits, groups) - beta mean entropy + gamma CE(class_logits, targets)``."""
    fooling = -alpha * F.cross_entropy(group_logits, groups) - beta * mean_entropy(group_logits)
    return fooling + gamma * F.cross_entropy(class_logits, targets)


class FAAP(Method):
    """Learn a bounded input perturbation that hides the protected group from a frozen model."""

    Params = FAAPParams
    stage = "post-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    two_stage = True
    description = "generator of bounded input perturbations vs a feature discriminator, deployed model frozen"
    paper = "Wang et al., Fairness-aware Adversarial Perturbation Towards Bias Mitigation for Deployed Deep Models, CVPR 2022"

    discriminator: FeatureDiscriminator | None = None  # training only: built by use_base
    prepared_discriminator: nn.Module | None = None  # the same, prepared for the run's processes by setup

    def stage_train(self, train):
        p = self.params
        return train.model_copy(update={"epochs": p.epochs, "batch_size": p.batch_size, "optimizer": "adam",
                                        "lr": p.generator_lr, "scheduler": "none", "max_steps": None,
                                        "weight_decay": 0.0})

    def use_base(self, base: nn.Module, backbone: nn.Module) -> None:
        """The deployed model is the base (copied into ``backbone``); the discriminator is built
        beside it, on its device."""
        super().use_base(base, backbone)
        device = next(base.parameters()).device
        self.discriminator = FeatureDiscriminator(backbone.feature_dim, self.info.num_groups).to(device)

    def build_model(self, backbone: nn.Module) -> PerturbedModel:
        p, preprocessing = self.params, self.info.preprocessing
        generator = PerturbationGenerator(p.generator_width, p.generator_dropout)
        return PerturbedModel(backbone, generator, p.epsilon, preprocessing.mean, preprocessing.std)

    def configure_optimizers(self, model: nn.Module, make_optimizer) -> list[torch.optim.Optimizer]:
        p = self.params
        discriminator = torch.optim.Adam(self.discriminator.parameters(), lr=p.discriminator_lr,
                                         weight_decay=p.discriminator_weight_decay)
        return [make_optimizer(model.generator.parameters()), discriminator]

    def setup(self, model, trainer) -> None:
        self.prepared_discriminator = trainer.accelerator.prepare(self.discriminator)

    def training_step(self, model, batch, trainer):
        p = self.params
        groups = batch["group"]
        class_logits, features = model(batch["image"], with_features=True)
        group_logits = self.prepared_discriminator(features.detach())
        discriminator_loss = F.cross_entropy(group_logits, groups)
        trainer.step(discriminator_loss, trainer.optimizers[1])
        group_logits = self.prepared_discriminator(features)  # the updated discriminator
        loss = generator_loss(group_logits, class_logits, groups, batch["target"], p.alpha, p.beta, p.gamma)
        trainer.step(loss, trainer.optimizers[0])
        return {"loss": loss.detach(), "discriminator_loss": discriminator_loss.detach(),
                "discriminator_accuracy": (group_logits.argmax(1) == groups).float().mean().detach()}

    def state_dict(self):
        return {"discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
